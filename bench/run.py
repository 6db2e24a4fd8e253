#!/usr/bin/env python3
"""mcluster benchmark, side by side with gunicorn (a pre-fork arbiter) in the same run; then
`mcluster dev` side by side with `systemfd --no-pid -- cargo watch -x run`.

One command, from anywhere:  python3 bench/run.py
Writes bench/results.md (and prints it). Python 3.11 standard library only; gunicorn is
installed into target/bench-venv, systemfd and cargo-watch into target/bench-tools (cargo
install, once) by this script when missing. See bench/README.md.
(`python3 bench/run.py --dev-only` runs and prints the dev section alone, leaving results.md;
`--throughput-only` runs and prints the throughput section alone, and replaces that section of
results.md, leaving the others; so do `--dev-switch-only`, `--roll-only` and `--livereload-only`,
the last one the save → page repainted row, in headless Chromium through Selenium.)

Everything binds 127.0.0.1 only. Every server is started in its own session and killed on exit
(SIGTERM, then SIGKILL to every process of that session), whatever happens.
"""

from __future__ import annotations

import atexit
import datetime
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results.md"
VENV = ROOT / "target" / "bench-venv"
MCLUSTER = ROOT / "target" / "release" / "mcluster"
ECHO = ROOT / "target" / "release" / "examples" / "fixture-echo"

REPS = 5  # samples per timing measurement
START_SIZES = (1, 16)
ROLL_SIZE = 4
CLIENTS = 8
LOAD_ROLLS = 5
BUDGET = 270.0  # seconds for the measurements (the build and pip install come before)
WAIT = 30.0  # the longest any single wait may take
CLIENT_TIMEOUT = 5.0  # per request (connect, send, read to EOF)

ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------------------------
# Processes: started in their own session, tracked, always killed.
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# The two systems under test. Each start() returns a Server whose readiness can be awaited,
# and tracks which worker pids are current.
# --------------------------------------------------------------------------------------------


def ready_line(size: int) -> str:
    """mcluster's line once the first generation is ready; group 1 is its own figure."""
    what = "the worker is" if size == 1 else f"all {size} workers"
    return rf"^mcluster: {what} ready in (\S+)$"


class Mcluster:
    name = "mcluster"

    def __init__(self) -> None:
        self.version = git_describe()

    def start(self, size: int) -> Server:
        argv = [
            str(MCLUSTER), "start", "-n", str(size), "--ready", "notify",
            "-l", "127.0.0.1:0", "--kill-timeout", "5s", "--ready-timeout", "20s",
            "--", str(ECHO),
        ]  # fmt: skip
        server = Server("mcluster", argv)
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$")
        server.port = int(m.group(1))
        server.size = size
        return server

    def wait_ready(self, server: Server) -> float:
        """Launch → arrival of `all N workers ready`. Also keeps mcluster's own figure."""
        _, t, m = server.wait_line(ready_line(server.size))
        server.self_reported = m.group(1)
        return t - server.t_launch

    def workers(self, server: Server) -> set[int]:
        """Current workers: the latest pid that became ready in each slot."""
        slots: dict[int, int] = {}
        with server.cond:
            for _, text in server.lines:
                m = re.match(r"^mcluster: w(\d+) ready \(pid (\d+), generation (\d+)\)", text)
                if m:
                    slots[int(m.group(1))] = int(m.group(2))
        return set(slots.values())

    def roll(self, server: Server) -> tuple[float, float]:
        """SIGHUP → (`rolled` line arrives, every old worker has exited)."""
        old = self.workers(server)
        mark = len(server.lines)
        t0 = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)
        _, t_rolled, _ = server.wait_line(r"^mcluster: rolled \d+ workers to generation \d+ in ", mark)
        t_gone = wait_exited(old, t0)
        return t_rolled - t0, max(t_gone, t_rolled) - t0

    def request(self) -> bytes:
        return b"ping\n"

    def valid(self, reply: bytes) -> bool:
        return reply.startswith(b"pid=") and reply.endswith(b" ping\n")


GUNICORN_APP = '''\
import os

def app(environ, start_response):
    body = b"pid=%d\\n" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

# Hooks: post_worker_init runs in the worker right after the app is loaded, immediately before
# its accept loop (the counterpart of the echo fixture's READY=1, sent right before its accept
# loop); child_exit runs in the arbiter when it reaps a worker.
GUNICORN_CONF = '''\
import os

def post_worker_init(worker):
    os.write(2, b"BENCH ready pid=%d\\n" % os.getpid())

def child_exit(server, worker):
    os.write(2, b"BENCH exit pid=%d\\n" % worker.pid)
'''


class Gunicorn:
    name = "gunicorn"

    def __init__(self, exe: Path, version: str, workdir: Path) -> None:
        self.exe = exe
        self.version = version
        self.workdir = workdir
        (workdir / "benchapp.py").write_text(GUNICORN_APP)
        (workdir / "benchconf.py").write_text(GUNICORN_CONF)

    def start(self, size: int) -> Server:
        def spawn(port: int) -> Server:
            argv = [
                str(self.exe), "-c", str(self.workdir / "benchconf.py"),
                "--chdir", str(self.workdir), "-k", "sync", "-w", str(size),
                "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "--timeout", "30",
                "--log-level", "info", "benchapp:app",
            ]  # fmt: skip
            server = Server("gunicorn", argv)
            server.port = port
            server.size = size
            return server

        return start_on_free_port(spawn, lambda server: server.wait_line(r"Listening at: http://127\.0\.0\.1:\d+"))

    def _ready_pids(self, server: Server, start: int = 0) -> list[tuple[float, int]]:
        with server.cond:
            return [
                (t, int(m.group(1)))
                for t, text in server.lines[start:]
                if (m := re.match(r"^BENCH ready pid=(\d+)$", text))
            ]

    def wait_ready(self, server: Server) -> float:
        """Launch → the Nth distinct worker's post_worker_init line arrives."""
        deadline = time.monotonic() + WAIT
        index = 0
        while True:
            index, _, _ = server.wait_line(r"^BENCH ready pid=", index, deadline - time.monotonic())
            ready = self._ready_pids(server)
            if len({pid for _, pid in ready}) >= server.size:
                return ready[-1][0] - server.t_launch
            index += 1

    def workers(self, server: Server) -> set[int]:
        with server.cond:
            gone = {
                int(m.group(1))
                for _, text in server.lines
                if (m := re.match(r"^BENCH exit pid=(\d+)$", text))
            }
        return {pid for _, pid in self._ready_pids(server)} - gone

    def roll(self, server: Server) -> tuple[float, float]:
        """SIGHUP → (N new workers passed post_worker_init, every old worker has exited)."""
        old = self.workers(server)
        mark = len(server.lines)
        t0 = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)
        deadline = t0 + WAIT
        index = mark
        while True:
            index, _, _ = server.wait_line(r"^BENCH ready pid=", index, deadline - time.monotonic())
            new = [(t, pid) for t, pid in self._ready_pids(server, mark) if pid not in old]
            if len(new) >= server.size:
                t_new = new[server.size - 1][0]
                break
            index += 1
        t_gone = wait_exited(old, t0)
        return t_new - t0, max(t_gone, t_new) - t0

    def request(self) -> bytes:
        return b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

    def valid(self, reply: bytes) -> bool:
        return reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\n") and b"pid=" in reply


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


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def measure_startup(system, size: int) -> dict:
    server = system.start(size)
    try:
        out = {"ready": system.wait_ready(server)}
        if hasattr(server, "self_reported"):
            out["self_reported"] = server.self_reported
        return out
    finally:
        server.stop()


def measure_roll(system) -> dict:
    server = system.start(ROLL_SIZE)
    try:
        system.wait_ready(server)
        time.sleep(0.5)  # let the master settle before reading its RSS
        rss = vm_rss_kib(server.pid)
        new_ready, all_done = system.roll(server)
        return {"rss_kib": rss, "roll_new": new_ready, "roll_done": all_done}
    finally:
        server.stop()


def exchange(port: int, request: bytes, timeout: float) -> bytes:
    """Sends `request` on a fresh connection to 127.0.0.1:port and reads the reply to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def client(system, port: int, stop: threading.Event, stats: dict) -> None:
    request = system.request()
    pid_re = re.compile(rb"pid=(\d+)")
    while not stop.is_set():
        try:
            reply = exchange(port, request, CLIENT_TIMEOUT)
            if system.valid(reply):
                stats["ok"] += 1
                m = pid_re.search(reply)
                if m:
                    stats["pids"].add(int(m.group(1)))
            else:
                stats["fail"] += 1
                key = "bad reply " + repr(reply[:40])
                stats["errors"][key] = stats["errors"].get(key, 0) + 1
        except OSError as e:
            stats["fail"] += 1
            key = type(e).__name__ + (f" errno {e.errno}" if e.errno else "")
            stats["errors"][key] = stats["errors"].get(key, 0) + 1


def measure_zero_drop(system) -> dict:
    server = system.start(ROLL_SIZE)
    stop = threading.Event()
    threads = []
    per_thread = [{"ok": 0, "fail": 0, "errors": {}, "pids": set()} for _ in range(CLIENTS)]
    rolls_done = 0
    roll_times = []
    try:
        system.wait_ready(server)
        t_begin = time.monotonic()
        for stats in per_thread:
            th = threading.Thread(target=client, args=(system, server.port, stop, stats), daemon=True)
            th.start()
            threads.append(th)
        time.sleep(1.0)
        for _ in range(LOAD_ROLLS):
            _, done = system.roll(server)
            roll_times.append(done)
            rolls_done += 1
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join(CLIENT_TIMEOUT + 2)
        t_end = time.monotonic()
        server.stop()
    errors: dict[str, int] = {}
    for stats in per_thread:
        for key, n in stats["errors"].items():
            errors[key] = errors.get(key, 0) + n
    ok = sum(s["ok"] for s in per_thread)
    fail = sum(s["fail"] for s in per_thread)
    return {
        "ok": ok,
        "fail": fail,
        "errors": errors,
        "rolls": rolls_done,
        "seconds": t_end - t_begin,
        "pids": len(set().union(*(s["pids"] for s in per_thread))),
        "roll_times": roll_times,
    }


# --------------------------------------------------------------------------------------------
# Throughput: the benchmark worker alone (this script hands it its socket), under `mcluster
# start -n 1` and `-n 2`, one client, fresh connections; then why -n 2 costs what it costs.
# --------------------------------------------------------------------------------------------

BENCH_WORKER = ROOT / "target" / "release" / "examples" / "bench-worker"
# bench-worker's ACCEPT argument (its `epoll`, level-triggered, behaves as `epoll-edge` here).
TP_VARIANTS = ("poll", "blocking", "epoll-edge", "epoll-exclusive")
TP_SETUPS = ("alone", "-n 1", "-n 2")
# Client threads, each a loop of fresh connections, and the setups measured with them: 32 keep
# the workers busy (several connections wait at each wake-up); 1 sends one connection at a time
# to idle workers, where a shared socket's wake-ups show, and grow with the number of workers.
TP_LOADS = ((32, TP_SETUPS), (1, ("alone", "-n 2", "-n 4")))
TP_SECONDS = 0.25  # of load per measurement
TP_REPS = 6  # rounds; each round runs every load × variant × setup once, back to back
TP_BUDGET = 70.0  # seconds; a round that would not fit is skipped
TP_BACKLOG = 4096  # the alone worker's listen backlog: mcluster's (SOMAXCONN)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Puts the inherited socket at fd 3 and execs the worker, as a socket-passing master would (no
# LISTEN_PID: the worker helpers accept it unset, as `systemfd --no-pid` leaves it).
TP_LAUNCHER = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.argv[2], sys.argv[2:])"

WORKER_EXIT = re.compile(
    r"bench-worker: exit pid=(\d+) accept=\S+ wakeups=(\d+) empty=(\d+) accepted=(\d+) eagain=(\d+)"
)
CLIENT_LINE = re.compile(
    r"^bench-client: requests=(\d+) errors=(\d+) seconds=(\S+) p50_us=(\d+) p99_us=(\d+) max_us=(\d+)$"
)


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


def tp_start(variant: str, setup: str) -> tuple[Server, int, list[int], int | None]:
    """Starts the worker(s): (server, port, worker pids, master pid or None)."""
    if setup == "alone":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(TP_BACKLOG)
            port = sock.getsockname()[1]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_SOCKET"))}
            env["LISTEN_FDS"] = "1"
            argv = [sys.executable, "-c", TP_LAUNCHER, str(sock.fileno()), str(BENCH_WORKER), variant]
            server = Server("bench-worker", argv, env=env, pass_fds=(sock.fileno(),))
        finally:
            sock.close()  # the worker has its copy
        _, _, m = server.wait_line(r"^bench-worker: serving pid=(\d+)$")
        return server, port, [int(m.group(1))], None
    size = int(setup.split()[-1])
    argv = [
        str(MCLUSTER), "start", "-n", str(size), "--ready", "notify", "-l", "127.0.0.1:0",
        "--kill-timeout", "5s", "--ready-timeout", "20s", "--", str(BENCH_WORKER), variant,
    ]  # fmt: skip
    server = Server("mcluster", argv)
    _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$")
    port = int(m.group(1))
    server.wait_line(ready_line(size))
    # A worker's own lines reach the master's stderr through its output thread, so its
    # `serving` line may come after the ready line.
    pids, index = [], 0
    while len(pids) < size:
        index, _, m = server.wait_line(r"bench-worker: serving pid=(\d+)$", index)
        pids.append(int(m.group(1)))
        index += 1
    return server, port, pids, server.pid


def tp_measure(variant: str, setup: str, loops: int) -> dict:
    """One measurement: TP_SECONDS of load from `loops` client loops; rates, latency, CPU, and
    the workers' counters."""
    server, port, workers, master = tp_start(variant, setup)
    client = None
    try:
        ours = workers + ([master] if master else [])
        before = {pid: cpu_ticks(pid) for pid in ours}
        switches_before = {pid: switches(pid) for pid in workers}
        machine_before = machine_ticks()
        t0 = time.monotonic()
        argv = [str(BENCH_WORKER), "client", str(port), str(TP_SECONDS), str(loops)]
        client = Server("bench-client", argv, merge_stdout=True, stdin_pipe=True)
        _, _, m = client.wait_line(CLIENT_LINE.pattern, timeout=TP_SECONDS + WAIT)
        # The client now waits for its stdin to close: its CPU time can still be read.
        wall = time.monotonic() - t0
        machine_after = machine_ticks()
        cpu = {pid: cpu_ticks(pid) - before[pid] for pid in ours}
        sleeps = sum(switches(pid)[0] - switches_before[pid][0] for pid in workers)
        preempted = sum(switches(pid)[1] - switches_before[pid][1] for pid in workers)
        cpu_client = cpu_ticks(client.pid)
    finally:
        if client is not None:
            client.kill()
        server.stop()
    counters = [WORKER_EXIT.search(text) for _, text in server.lines]
    counters = [c for c in counters if c]
    if len(counters) != len(workers):
        raise RuntimeError(f"{len(workers)} workers, {len(counters)} exit lines:\n{server.tail()}")
    requests, errors, seconds = int(m.group(1)), int(m.group(2)), float(m.group(3))

    def cores(ticks: int) -> float:
        return ticks / CLK_TCK / wall

    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    return {
        "rps": requests / seconds,
        "requests": requests,
        "errors": errors,
        "p50": int(m.group(4)) / 1e6,
        "p99": int(m.group(5)) / 1e6,
        "max": int(m.group(6)) / 1e6,
        "client_cpu": cores(cpu_client),
        "workers_cpu": cores(sum(cpu[pid] for pid in workers)),
        "workers_cpu_s": sum(cpu[pid] for pid in workers) / CLK_TCK,
        "master_cpu": cores(cpu[master]) if master else 0.0,
        "machine_busy": busy / total * (os.cpu_count() or 1) if total else 0.0,
        "wakeups": sum(int(c.group(2)) for c in counters),
        "empty": sum(int(c.group(3)) for c in counters),
        "accepted": sum(int(c.group(4)) for c in counters),
        "sleeps": sleeps,
        "preempted": preempted,
        "shares": sorted((int(c.group(4)) for c in counters), reverse=True),
    }


def measure_throughput() -> tuple[dict, list[str]]:
    """Rounds of every load × variant × setup, back to back (the order of the setups rotates
    each round, so that none always runs first or last). Returns {"rounds": [{(loops, variant,
    setup): measurement}]}, and notes."""
    rounds: list[dict[tuple[int, str, str], dict]] = []
    notes: list[str] = []
    load_start = loadavg()
    budget = Budget(TP_BUDGET)
    per_round = sum(len(setups) for _, setups in TP_LOADS) * len(TP_VARIANTS) * (TP_SECONDS + 0.25)
    try:
        for r in range(TP_REPS):
            if budget.left() < per_round:
                notes.append(f"throughput: stopped after {r} rounds (time budget)")
                break
            print(f"bench: throughput round {r + 1}/{TP_REPS}", file=sys.stderr, flush=True)
            this_round: dict[tuple[int, str, str], dict] = {}
            for loops, setups in TP_LOADS:
                shift = r % len(setups)
                for variant in TP_VARIANTS:
                    for setup in setups[shift:] + setups[:shift]:
                        try:
                            this_round[(loops, variant, setup)] = tp_measure(variant, setup, loops)
                        except Exception as e:
                            what = f"throughput {variant} {setup} {loops} loops, round {r + 1}"
                            notes.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0]}")
                            print(f"bench: {what} failed: {e}", file=sys.stderr, flush=True)
            rounds.append(this_round)
    finally:
        kill_all()
    notes.append(f"load average (1/5/15 min) at the start of this section: {load_start}; at the end: {loadavg()}")
    return {"rounds": rounds}, notes


def ratio_median(rounds: list[dict], key: tuple[int, str, str], field: str) -> float | None:
    """Median over rounds of (`field` of `key` / `field` of the same load and variant alone),
    both from the same round."""
    alone = (key[0], key[1], "alone")
    ratios = [r[key][field] / r[alone][field] for r in rounds if key in r and alone in r and r[alone][field]]
    return statistics.median(ratios) if ratios else None


THROUGHPUT_HEADING = "## Throughput: the worker alone and under `mcluster start -n N`"


TP_LABELS = {
    "poll": "`poll` + non-blocking `accept`",
    "blocking": "blocking `accept`",
    "epoll": "epoll (level-triggered) + non-blocking `accept`",
    "epoll-edge": "epoll, edge-triggered (as mio/tokio) + non-blocking `accept`",
    "epoll-exclusive": "epoll with `EPOLLEXCLUSIVE` + non-blocking `accept`",
}


def throughput_findings(rounds: list[dict], samples: dict) -> list[str]:
    """The section's findings, worded from this run's numbers."""

    def med(key, fn) -> float | None:
        values = [fn(s) for s in samples.get(key, []) if s["accepted"]]
        return statistics.median(values) if values else None

    def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
        return "n/a" if value is None else f"{value:{spec}}{unit}"

    busy_loops = TP_LOADS[0][0]
    idle_loops, idle_setups = TP_LOADS[-1]
    widest = idle_setups[-1]
    out = ["Findings (this run):\n"]
    ratios = {v: ratio_median(rounds, (busy_loops, v, "-n 2"), "rps") for v in TP_VARIANTS}
    ratios1 = {v: ratio_median(rounds, (busy_loops, v, "-n 1"), "rps") for v in TP_VARIANTS}
    known = [r for r in ratios.values() if r is not None]
    spread = [r for r in ratios1.values() if r is not None]
    out.append(
        f"- **-n 2 against the worker alone, {busy_loops} loops**: "
        + ", ".join(f"{v} {fmt(ratios[v])}×" for v in TP_VARIANTS)
        + ". As a yardstick for the noise, -n 1 against alone (the same single worker; "
        "mcluster's master does no work per connection): "
        + ", ".join(f"{v} {fmt(ratios1[v])}×" for v in TP_VARIANTS)
        + ". "
        + (
            "-n 2 stays within that spread: no variant loses throughput to a second worker "
            "that this run can tell from noise."
            if known and spread and min(known) >= min(spread)
            else "-n 2 falls below that spread for "
            + ", ".join(v for v, r in ratios.items() if r is not None and spread and r < min(spread))
            + " in this run: check the raw samples for a round hit by other work before "
            "reading it as a cost."
        )
    )
    sleeps = {
        (v, s): med((busy_loops, v, s), lambda x: x["sleeps"] / x["accepted"]) for v in TP_VARIANTS for s in TP_SETUPS
    }
    cpu = {
        (v, s): med((busy_loops, v, s), lambda x: x["workers_cpu_s"] / x["accepted"] * 1e6)
        for v in TP_VARIANTS
        for s in TP_SETUPS
    }
    out.append(
        f"- **Busy workers are rarely woken for nothing**: at {busy_loops} loops a worker sleeps "
        f"{fmt(min(filter(None, sleeps.values())))}–{fmt(max(filter(None, sleeps.values())))} times "
        "per connection in every row: connections are waiting whenever it looks, so one wake-up "
        "of a poll/epoll worker serves several, and a blocking `accept` rarely blocks. The "
        f"workers' CPU per connection is {fmt(min(filter(None, cpu.values())), '.1f')}–"
        f"{fmt(max(filter(None, cpu.values())), '.1f')} µs in every row, alone or not."
    )
    client = [med((busy_loops, v, s), lambda x: x["client_cpu"]) for v in TP_VARIANTS for s in TP_SETUPS]
    workers = [med((busy_loops, v, s), lambda x: x["workers_cpu"]) for v in TP_VARIANTS for s in TP_SETUPS]
    machine = [med((busy_loops, v, s), lambda x: x["machine_busy"]) for v in TP_VARIANTS for s in TP_SETUPS]
    master = [med((busy_loops, v, s), lambda x: x["master_cpu"]) for v in TP_VARIANTS for s in ("-n 1", "-n 2")]
    client2 = {v: (med((busy_loops, v, "alone"), lambda x: x["client_cpu"]), med((busy_loops, v, "-n 2"), lambda x: x["client_cpu"])) for v in TP_VARIANTS}

    client_first = min(filter(None, client), default=0) > max(filter(None, workers), default=0)
    kept = [b / a for a, b in client2.values() if a and b]
    client_kept = statistics.median(kept) if kept else None

    def span(values: list) -> str:
        values = [x for x in values if x is not None]
        if not values:
            return "n/a"
        low, high = f"{min(values):.2f}", f"{max(values):.2f}"
        return low if low == high else f"{low}–{high}"

    out.append(
        f"- **Where the CPU goes**, {busy_loops} loops: the whole machine is busy "
        f"({span(machine)} of {os.cpu_count()} cores) in every row; the client takes "
        f"{span(client)} cores, the workers {span(workers)}, mcluster's master {span(master)}. "
        + (
            "The client is the biggest consumer and competes with the workers for the same "
            "cores, so the rate is bounded by how the cores are shared, not by the workers. "
            if client_first
            else ""
        )
        + "The client's share alone → -n 2: "
        + ", ".join(f"{v} {fmt(a)} → {fmt(b)}" for v, (a, b) in client2.items())
        + (
            ": no systematic drop, the second worker does not take CPU from the client beyond "
            "the noise."
            if client_kept is not None and client_kept >= 0.9
            else ": the client got less CPU with a second worker in this run."
        )
    )
    extra = {}
    for v in TP_VARIANTS:
        alone = med((idle_loops, v, "alone"), lambda x: x["sleeps"] / x["accepted"])
        wide = med((idle_loops, v, widest), lambda x: x["sleeps"] / x["accepted"])
        extra[v] = (alone, wide)
    empty = [med((idle_loops, v, s), lambda x: x["empty"] / x["accepted"]) for v in TP_VARIANTS for s in idle_setups]
    out.append(
        f"- **Idle workers and a shared socket**, {idle_loops} loop (one connection at a time): "
        f"sleeps per connection alone → {widest}: "
        + ", ".join(f"{v} {fmt(a)} → {fmt(b)}" for v, (a, b) in extra.items())
        + ". A worker waiting in `poll` or in a plain epoll set (edge-triggered or not) is "
        "woken for every connection, with every other idle worker (about one more sleep per "
        "connection per extra worker); the kernel wakes only one worker blocked in `accept`, or "
        "one epoll set registered with `EPOLLEXCLUSIVE`. The extra wake-ups end inside the "
        "kernel: `poll` and `epoll_wait` check the socket again before they return, find the "
        "queue empty and sleep again, so the programs see almost none (*empty* at most "
        f"{fmt(max(filter(lambda x: x is not None, empty), default=None), '.3f')} per "
        "connection: an `accept` that fails with `EAGAIN` is rare). Their CPU cost does not "
        "stand out from the "
        "noise of the workers' CPU per connection at 2 and 4 workers; their number grows with "
        "the number of idle workers."
    )
    idle2 = {v: ratio_median(rounds, (idle_loops, v, idle_setups[1]), "rps") for v in TP_VARIANTS}
    if all(r is not None and r < 1 for r in idle2.values()):
        out.append(
            f"- **One connection at a time is slower with more workers**, {idle_setups[1]} "
            "against alone: "
            + ", ".join(f"{v} {fmt(r)}×" for v, r in idle2.items())
            + ". The wake-one variants lose too, so the extra wake-ups are not the reason; with "
            "a single connection in flight every request waits for a wake-up, and spreading "
            "them over processes (and cores) makes each slower (not isolated further here). "
            f"With {busy_loops} loops the workers are awake and this does not show."
        )
    tails = {v: ratio_median(rounds, (idle_loops, v, widest), "p99") for v in TP_VARIANTS}
    wake_one = [tails[v] for v in ("blocking", "epoll-exclusive") if tails.get(v) is not None]
    wake_all = [tails[v] for v in ("poll", "epoll", "epoll-edge") if tails.get(v) is not None]
    out.append(
        f"- **Tails at {idle_loops} loop**, p99 at {widest} against alone: "
        + ", ".join(f"{v} {fmt(tails[v])}×" for v in TP_VARIANTS)
        + ". "
        + (
            "The workers that are woken one at a time (blocking `accept`, `EPOLLEXCLUSIVE`) had "
            "the worse tails in this run. A likely reason, on a machine whose cores are taken by "
            "other work: a wake-one wake-up goes to one worker, which may then wait for a CPU, "
            "while with `poll` every idle worker is woken and the first that runs takes the "
            "connection. The wasted wake-ups buy latency; the rates are too noisy here to say "
            "more."
            if wake_one and wake_all and min(wake_one) > max(wake_all)
            else "No consistent difference between the wake-one and the wake-all variants "
            "beyond the noise."
        )
    )
    shares = []
    for v in TP_VARIANTS:
        values = [s["shares"][0] / s["accepted"] for s in samples.get((idle_loops, v, widest), []) if s["accepted"]]
        shares.append(f"{v} {fmt(statistics.median(values) * 100 if values else None, '.0f', ' %')}")
    out.append(
        f"- **Who gets the connections** at {idle_loops} loop, {widest}, the busiest worker's share: "
        + ", ".join(shares)
        + f" (even would be {100 / int(widest.split()[-1]):.0f} %). The kernel hands a connection "
        "to the worker blocked in `accept` longest, so blocking workers take turns; with "
        "`EPOLLEXCLUSIVE` it wakes the first epoll set in the socket's wait queue (the earliest "
        "registered) that has a waiter, so a lightly loaded cluster runs mostly on one worker "
        "(the others take over while it is busy)."
    )
    out.append("")
    return out


def throughput_report(tp: dict, notes: list[str]) -> list[str]:
    rounds = tp["rounds"]
    samples: dict[tuple[int, str, str], list[dict]] = {}
    for this_round in rounds:
        for key, value in this_round.items():
            samples.setdefault(key, []).append(value)

    def med(key, fn) -> float | None:
        values = [fn(s) for s in samples.get(key, []) if s["accepted"]]
        return statistics.median(values) if values else None

    out = [THROUGHPUT_HEADING + "\n"]
    out.append(
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, mcluster {git_describe()} "
        "(release build). Worker: `bench-worker ACCEPT` ([worker.rs](worker.rs)), one line in, "
        "one line out, served inline on one thread; ACCEPT picks how it waits for connections. "
        "Client: `bench-worker client`, N threads, each a loop of fresh connections to "
        f"127.0.0.1 (connect, `ping`, read to EOF), {TP_SECONDS:g} s per measurement. "
        f"{len(rounds)} rounds, each running every row once, back to back; medians over the "
        "rounds, and *vs alone* is the median of the per-round ratios to the same worker alone.\n"
    )
    for loops, setups in TP_LOADS:
        title = (
            f"**{loops} client loops** (the workers are kept busy)"
            if loops > 1
            else "**1 client loop** (one connection at a time, to idle workers)"
        )
        out.append(title + ":\n")
        out.append(
            "| Worker waits with | Setup | req/s (vs alone) | p50 | p99 (vs alone) "
            "| per conn.: sleeps · wake-ups · empty | worker CPU / conn. "
            "| CPU, cores: client · workers · master · whole machine |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for variant in TP_VARIANTS:
            for setup in setups:
                key = (loops, variant, setup)
                label = TP_LABELS[variant] if setup == setups[0] else ""
                if not samples.get(key):
                    out.append(f"| {label} | {setup} | n/a | | | | | |")
                    continue
                vs = "" if setup == "alone" else ratio_median(rounds, key, "rps")
                vs_p99 = "" if setup == "alone" else ratio_median(rounds, key, "p99")
                errors = sum(s["errors"] for s in samples[key])
                cpu = " · ".join(
                    "—" if field == "master_cpu" and setup == "alone" else f"{med(key, lambda s: s[field]):.2f}"
                    for field in ("client_cpu", "workers_cpu", "master_cpu", "machine_busy")
                )
                out.append(
                    f"| {label} | {setup} | **{med(key, lambda s: s['rps']):,.0f}**"
                    + (f" (**{vs:.2f}×**)" if vs else "")
                    + (f", {errors} errors" if errors else "")
                    + f" | {ms(med(key, lambda s: s['p50']))} | {ms(med(key, lambda s: s['p99']))}"
                    + (f" ({vs_p99:.2f}×)" if vs_p99 else "")
                    + f" | {med(key, lambda s: s['sleeps'] / s['accepted']):.2f}"
                    + f" · {med(key, lambda s: s['wakeups'] / s['accepted']):.2f}"
                    + f" · {med(key, lambda s: s['empty'] / s['accepted']):.3f}"
                    + f" | {med(key, lambda s: s['workers_cpu_s'] / s['accepted'] * 1e6):.1f} µs"
                    + f" | {cpu} |"
                )
        out.append("")
    try:
        out += throughput_findings(rounds, samples)
    except (ValueError, TypeError, ZeroDivisionError, statistics.StatisticsError) as e:
        out.append(f"Findings: not enough measurements ({type(e).__name__}).\n")
    out.append("Notes:\n")
    out.append(
        f"- *alone*: this script binds 127.0.0.1:0 (backlog {TP_BACKLOG}, as mcluster's), and "
        "a small Python launcher puts the socket at fd 3 and execs the worker with `LISTEN_FDS=1` "
        "and no `LISTEN_PID`. *-n N*: `mcluster start -n N --ready notify -l "
        "127.0.0.1:0 -- bench-worker ACCEPT`. The load starts once every worker is ready."
    )
    out.append(
        "- *Per connection* (over the connections the workers accepted): *sleeps*: voluntary "
        "context switches of the workers' serving threads (`/proc/PID/status`), i.e. every time "
        "one went to sleep (in `poll`, `epoll_wait`, `accept`, or `read` when the request had "
        "not arrived yet) and was woken again, including wake-ups that find nothing and go back "
        "to sleep inside the kernel, which the program never sees; *wake-ups*: returns of "
        "`poll`/`epoll_wait` with the listener ready, or of a blocking `accept`, counted by the "
        "workers (a poll/epoll worker accepts until `EAGAIN`, so when connections queue up one "
        "wake-up serves several); *empty*: wake-ups whose first `accept` found nothing, another "
        "worker having taken the connection. *worker CPU / conn.*: the workers' CPU time over "
        "the connections."
    )
    out.append(
        "- *CPU*: user + system time from `/proc/PID/stat` over the measurement, divided by its "
        "wall time (1.00 = one core busy; clock ticks of 10 ms); *whole machine*: all CPUs' busy "
        f"time from `/proc/stat` ({os.cpu_count()} CPUs here): ours, the kernel's loopback work "
        "not charged to a process, and whatever else runs on the machine."
    )
    out.append(
        "- Loopback on a shared 2-core machine: the client and the workers compete for the same "
        "cores, and other work on the machine shifts every number; compare the rows of one "
        "variant (run back to back in each round), not with the first section's rates."
    )
    for note in notes:
        out.append(f"- {'' if note.startswith('load average') else 'Problem: '}{note}")
    out.append("")
    out.append("Raw samples, per round: req/s (p99 ms; sleeps, wake-ups, empty; connections per worker):\n")
    for loops, setups in TP_LOADS:
        for variant in TP_VARIANTS:
            parts = []
            for setup in setups:
                parts.append(
                    f"{setup}: "
                    + ", ".join(
                        f"{s['rps']:.0f} ({s['p99'] * 1000:.2f}; {s['sleeps']}, {s['wakeups']}, {s['empty']}; "
                        f"{'+'.join(str(x) for x in s['shares'])})"
                        for s in samples.get((loops, variant, setup), [])
                    )
                )
            out.append(f"- {loops} loop{'s' if loops > 1 else ''}, {variant}: " + "; ".join(parts))
    out.append("")
    return out


# --------------------------------------------------------------------------------------------
# Dev mode: `mcluster dev` and the anchor, `systemfd --no-pid -- cargo watch -x run`, on copies
# of examples/hello-app. An edit is a new string literal in the answer (`Hello #N from worker`).
# --------------------------------------------------------------------------------------------

TOOLS = ROOT / "target" / "bench-tools"  # `cargo install --root` of systemfd and cargo-watch
HELLO = ROOT / "examples" / "hello-app"
DEV_SIZE = 2  # mcluster dev workers
DEV_EDITS = 5  # edits per measurement
DEV_POLL = 0.010  # between two GETs while waiting for the new text
DEV_WAIT = 90.0  # the longest a reload (build included) may take
DEV_SETTLE = 1.0  # quiet time before each edit (and of load after each reload)
DEV_CLIENT_TIMEOUT = 30.0  # per request under load: a request waiting out a build is not failed
DEV_BUDGET = 480.0  # seconds for the dev section after the tools are installed
ANCHOR_BACKLOG = 4096  # the anchor's second run under load: mcluster's listen backlog (SOMAXCONN)
MARK = re.compile(rb"Hello #(\d+) from worker")
HTTP_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

# The anchor's copy takes its socket with the listenfd crate (as axum/actix apps run under
# systemfd do), instead of mcluster::worker::listeners(), which like sd_listen_fds wants
# LISTEN_PID to be its own pid: under `systemfd --no-pid` it is unset, and without --no-pid it is
# the pid of cargo-watch (systemfd execs its command), so the app would take no socket either way.
LISTENERS_MCLUSTER = """\
    let listeners: Vec<TcpListener> = worker::listeners()?
        .into_iter()
        .filter_map(worker::Listener::into_tcp)
        .collect();"""
LISTENERS_LISTENFD = """\
    let listeners: Vec<TcpListener> = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)?
        .into_iter()
        .collect();"""
ANSWER = '"Hello from worker '


class Project:
    """A copy of examples/hello-app with its own CARGO_TARGET_DIR, and its edits."""

    def __init__(self, workdir: Path, name: str, mcluster_src: Path, listenfd: bool) -> None:
        self.dir = workdir / f"{name}-app"
        self.target = workdir / f"{name}-target"
        shutil.copytree(HELLO, self.dir, ignore=shutil.ignore_patterns("target"))
        manifest = self.dir / "Cargo.toml"
        text = manifest.read_text()
        if 'mcluster = { path = "../.."' not in text:
            raise RuntimeError("examples/hello-app/Cargo.toml: no mcluster path dependency")
        text = text.replace('path = "../.."', f'path = "{mcluster_src}"')
        self.main = self.dir / "src" / "main.rs"
        source = self.main.read_text()
        if ANSWER not in source:
            raise RuntimeError(f"examples/hello-app/src/main.rs: no {ANSWER!r} to edit")
        if listenfd:
            if LISTENERS_MCLUSTER not in source:
                raise RuntimeError("examples/hello-app/src/main.rs: the listeners() call changed")
            source = source.replace(LISTENERS_MCLUSTER, LISTENERS_LISTENFD)
            text = text.replace("[dependencies]\n", '[dependencies]\nlistenfd = "1.0"\n', 1)
        manifest.write_text(text)
        self.main.write_text(source)
        self.source = source
        self.edits = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CARGO_TARGET_DIR"] = str(self.target)
        env["PATH"] = f"{TOOLS / 'bin'}:{env.get('PATH', '')}"
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "APP_ENV"):
            env.pop(key, None)
        return env

    def edit(self) -> int:
        """Writes main.rs with a new answer text, `Hello #N from worker`; returns N."""
        self.edits += 1
        self.main.write_text(self.source.replace(ANSWER, f'"Hello #{self.edits} from worker '))
        return self.edits

    def cargo_build(self) -> float:
        """Runs `cargo build` (the project must need a rebuild); returns its wall time."""
        t0 = time.monotonic()
        out = subprocess.run(
            ["cargo", "build"], cwd=self.dir, env=self.env(), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(f"cargo build failed in {self.dir}:\n{out.stderr[-2000:]}")
        compiled = re.findall(r"^\s*Compiling (\S+)", out.stderr, re.M)
        if compiled != ["hello-app"]:
            raise RuntimeError(f"not an incremental build of hello-app alone: compiled {compiled}")
        return elapsed


def marker(n: int) -> bytes:
    return b"Hello #%d from worker" % n


def http_get(port: int, timeout: float) -> bytes:
    return exchange(port, HTTP_GET, timeout)


def wait_systemfd_serving(server: "Server", timeout: float) -> None:
    """Waits until systemfd has its socket and the app behind it answers `GET /`."""
    server.wait_line(r"^~> socket http://127\.0\.0\.1:\d+/? -> fd #\d+", timeout=timeout)
    deadline = time.monotonic() + timeout
    while answered_text(server.port) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app never answered:\n{server.tail()}")
        if server.proc.poll() is not None:
            raise RuntimeError(f"systemfd exited:\n{server.tail()}")
        time.sleep(0.05)


def answered_text(port: int, timeout: float = 2.0) -> bytes | None:
    try:
        reply = http_get(port, timeout)
    except OSError:
        return None
    return reply if reply.startswith(b"HTTP/1.1 200") else None


def wait_served(port: int, n: int, deadline: float) -> float:
    """GETs every DEV_POLL until an answer has `Hello #n`; returns when that answer completed.
    A GET that waits in the listen queue (nothing accepting) waits; it is not retried."""
    want = marker(n)
    while True:
        try:
            reply = http_get(port, max(1.0, deadline - time.monotonic()))
        except OSError:
            reply = b""
        now = time.monotonic()
        if want in reply:
            return now
        if now > deadline:
            raise TimeoutError(f"GET / never answered {want!r}")
        time.sleep(DEV_POLL)


class DevMcluster:
    name = "mcluster"

    def __init__(self, project: Project, workdir: Path) -> None:
        self.project = project
        self.workdir = workdir
        self.argv = [
            str(MCLUSTER), "dev", "-n", str(DEV_SIZE), "-l", "127.0.0.1:0", "--kill-timeout", "5s",
            "--manifest-path", str(project.dir / "Cargo.toml"),
        ]  # fmt: skip

    def command(self) -> str:
        return f"CARGO_TARGET_DIR=… mcluster dev -n {DEV_SIZE} -l 127.0.0.1:0 --kill-timeout 5s --manifest-path <copy>/Cargo.toml"

    def start(self) -> Server:
        server = Server("mcluster dev", self.argv, cwd=self.project.dir, env=self.project.env(), scope=self.workdir)
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$", timeout=DEV_WAIT)
        server.port = int(m.group(1))
        server.wait_line(rf"^mcluster: all {DEV_SIZE} workers ready in ", timeout=DEV_WAIT)
        return server

    def wait_reload(self, server: Server, mark: int, t0: float) -> dict:
        """The reload's one line: edit → `rolled` line, and mcluster's own build time."""
        _, t, m = server.wait_line(r"^mcluster: \S.* changed → (.*)$", mark, timeout=DEV_WAIT)
        done = re.match(r"built in (\S+) → rolled (\d+) workers in (\S+)(?: \(switch \S+\))?$", m.group(1))
        if not done:
            raise RuntimeError(f"reload failed: {m.group(0)}")
        return {
            "all_new": t - t0,
            "self_build": parse_human(done.group(1)),
            "self_roll": parse_human(done.group(3)),
        }


class DevAnchor:
    name = "anchor"

    def __init__(self, project: Project, workdir: Path, backlog: int | None = None) -> None:
        self.project = project
        self.workdir = workdir
        self.backlog = backlog  # None: systemfd's default, 1
        self.flags = ["--backlog", str(backlog)] if backlog else []

    def command(self) -> str:
        flags = "".join(f"{f} " for f in self.flags)
        return f"CARGO_TARGET_DIR=… systemfd --no-pid {flags}-s http::127.0.0.1:PORT -- cargo watch -x run"

    def start(self) -> Server:
        def spawn(port: int) -> Server:
            argv = [
                str(TOOLS / "bin" / "systemfd"), "--no-pid", *self.flags, "-s", f"http::127.0.0.1:{port}",
                "--", "cargo", "watch", "-x", "run",
            ]  # fmt: skip
            # cargo-watch writes its `[Running 'cargo run']` lines to stdout.
            server = Server(
                "systemfd + cargo watch", argv, cwd=self.project.dir, env=self.project.env(),
                scope=self.workdir, merge_stdout=True,
            )  # fmt: skip
            server.port = port
            return server

        return start_on_free_port(spawn, lambda server: wait_systemfd_serving(server, DEV_WAIT))

    def wait_reload(self, server: Server, mark: int, t0: float) -> dict:
        """cargo-watch's `[Running 'cargo run']` (the change noticed, the old app stopped) and
        cargo's own `Finished … in` time."""
        i, t_run, _ = server.wait_line(r"^\[Running 'cargo run'\]", mark, timeout=DEV_WAIT)
        _, _, m = server.wait_line(r"^\s*Finished `dev` profile .* in (\S+)$", i, timeout=DEV_WAIT)
        return {"restart": t_run - t0, "self_build": parse_human(m.group(1))}


def parse_human(text: str) -> float:
    """`358ms`, `1.32s` (mcluster), `0.18s` (cargo) → seconds."""
    m = re.fullmatch(r"([\d.]+)(ms|s)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def measure_edit_to_served(system, server: Server) -> list[dict]:
    """DEV_EDITS times: settle, edit, GET every 10 ms until the new text comes back."""
    samples = []
    for _ in range(DEV_EDITS):
        time.sleep(DEV_SETTLE)
        mark = len(server.lines)
        t0 = time.monotonic()
        n = system.project.edit()
        t_served = wait_served(server.port, n, t0 + DEV_WAIT)
        sample = system.wait_reload(server, mark, t0)
        sample["served"] = t_served - t0
        samples.append(sample)
    return samples


def dev_client(port: int, stop: threading.Event, rec: dict) -> None:
    while not stop.is_set():
        t = time.monotonic()
        try:
            reply = http_get(port, DEV_CLIENT_TIMEOUT)
            done = time.monotonic()
            m = MARK.search(reply)
            if reply.startswith(b"HTTP/1.1 200") and (m or b"Hello from worker" in reply):
                rec["ok"].append((t, done - t))
                n = int(m.group(1)) if m else 0
                rec["seen"].setdefault(n, done)
            else:
                key = f"bad reply ({len(reply)} bytes, ends {reply[-24:]!r})"
                rec["errors"][key] = rec["errors"].get(key, 0) + 1
                rec["failures"].append((t, time.monotonic()))
        except OSError as e:
            key = type(e).__name__ + (f" errno {e.errno}" if e.errno else "")
            rec["errors"][key] = rec["errors"].get(key, 0) + 1
            rec["failures"].append((t, time.monotonic()))


def measure_dev_load(system, server: Server) -> dict:
    """CLIENTS threads of fresh-connection GETs: 1 s, then DEV_EDITS reloads (each: edit, wait
    for the new text in an answer and for the reload to end, DEV_SETTLE of load), 0.5 s more."""
    stop = threading.Event()
    recs = [{"ok": [], "errors": {}, "seen": {}, "failures": []} for _ in range(CLIENTS)]
    edits: list[float] = []
    threads = [threading.Thread(target=dev_client, args=(server.port, stop, rec), daemon=True) for rec in recs]
    served, reloads = [], []
    t_begin = time.monotonic()
    t_first_edit = None
    try:
        for th in threads:
            th.start()
        time.sleep(1.0)
        for _ in range(DEV_EDITS):
            mark = len(server.lines)
            t0 = time.monotonic()
            t_first_edit = t_first_edit or t0
            edits.append(t0)
            n = system.project.edit()
            deadline = t0 + DEV_WAIT
            while not any(n in rec["seen"] for rec in recs):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer with Hello #{n} under load")
                time.sleep(DEV_POLL)
            served.append(min(rec["seen"][n] for rec in recs if n in rec["seen"]) - t0)
            reloads.append(system.wait_reload(server, mark, t0))
            time.sleep(DEV_SETTLE)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join(DEV_CLIENT_TIMEOUT + 2)
    t_end = time.monotonic()
    ok = [x for rec in recs for x in rec["ok"]]
    errors: dict[str, int] = {}
    for rec in recs:
        for key, count in rec["errors"].items():
            errors[key] = errors.get(key, 0) + count
    latencies = sorted(lat for _, lat in ok)

    def since_edit(t: float) -> str:
        before = [e for e in edits if e <= t]
        return f"+{(t - before[-1]) * 1000:.0f} ms" if before else "(before the first edit)"

    # Slow requests: did they start during a reload (between an edit and the first answer with
    # its text) or at another time?
    windows = [(t0, t0 + dt) for t0, dt in zip(edits, served)]

    def during(t: float) -> bool:
        return any(w0 <= t <= w1 for w0, w1 in windows)

    slow = {
        limit: (
            sum(1 for t, lat in ok if lat >= limit and during(t)),
            sum(1 for t, lat in ok if lat >= limit and not during(t)),
        )
        for limit in (0.1, 1.0)
    }

    # When the failed and the slowest requests started, relative to the edit before them.
    failures = sorted(f for rec in recs for f in rec["failures"])
    slowest = sorted(ok, key=lambda x: x[1])[-5:]
    steady = sorted(lat for t, lat in ok if t_first_edit is None or t + lat < t_first_edit)
    return {
        "ok": len(ok),
        "fail": sum(errors.values()),
        "errors": errors,
        "failures_at": [f"{(end - t) * 1000:.0f} ms at {since_edit(t)}" for t, end in failures[:10]],
        "slowest_at": [f"{lat * 1000:.0f} ms at {since_edit(t)}" for t, lat in slowest],
        "reloads": len(served),
        "seconds": t_end - t_begin,
        "lat": latencies,
        "steady": steady,
        "served": served,
        "self_build": [r["self_build"] for r in reloads],
        "over_1s": sum(1 for x in latencies if x >= 1.0),
        "slow": slow,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        raise ValueError("no values")
    # nearest rank
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


# The tools this script installs with `cargo install --locked --root target/bench-tools`: their
# executable and the crate that has it.
TOOL_CRATES = {"systemfd": "systemfd", "cargo-watch": "cargo-watch", "watchexec": "watchexec-cli"}


def install_dev_tools(tools: tuple[str, ...] = ("systemfd", "cargo-watch")) -> tuple[dict[str, str] | None, str]:
    """({tool: version}, "") once every tool of `tools` (executables of TOOL_CRATES) is in
    target/bench-tools/bin, or (None, why not)."""
    try:
        missing = [TOOL_CRATES[t] for t in tools if not (TOOLS / "bin" / t).exists()]
        if missing:
            cmd = ["cargo", "install", "--locked", "--root", str(TOOLS), *missing]
            print(
                f"bench: {' '.join(cmd)}\nbench: (once: compiles for a few minutes; cargo's progress follows)",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            subprocess.run(cmd, check=True, timeout=1800)
        versions = {}
        for t in tools:
            out = subprocess.run([str(TOOLS / "bin" / t), "--version"], capture_output=True, text=True, timeout=30, check=True)
            versions[t] = out.stdout.strip().splitlines()[0].split()[1]  # `watchexec 2.8.0 (…)`, more lines
        return versions, ""
    except subprocess.CalledProcessError as e:
        return None, f"could not be installed (`{' '.join(map(str, e.cmd[:2]))} …` exited with {e.returncode})"
    except subprocess.TimeoutExpired as e:
        return None, f"could not be installed (`{' '.join(map(str, e.cmd[:2]))} …` timed out after {e.timeout:.0f} s)"
    except OSError as e:
        return None, f"could not be installed ({e})"


def run_dev_section(workdir: Path, notes: list[str], out: dict) -> None:
    """Everything of the dev section, into `out` (partial if it raises)."""
    out.update({"mcluster": {}, "anchor": {}, "anchor_backlog": {}})
    versions, why = install_dev_tools()
    out["tools"], out["tools_why"] = versions, why
    if versions is None:
        print(f"bench: systemfd/cargo-watch {why}; measuring mcluster dev alone", file=sys.stderr, flush=True)
    budget = Budget(DEV_BUDGET)
    out["cargo"] = subprocess.run(["cargo", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()

    # A snapshot of mcluster's sources for the copies' path dependency: edits made to
    # /work/main/src during the run must not rebuild it, and cargo-watch watches path deps too.
    src = workdir / "mcluster-src"
    src.mkdir()
    for name in ("Cargo.toml", "Cargo.lock"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("src", "fixtures", "tests"):
        shutil.copytree(ROOT / name, src / name)
    projects = {"mcluster": Project(workdir, "mcluster", src, listenfd=False)}
    systems = {"mcluster": DevMcluster(projects["mcluster"], workdir)}
    if versions is not None:
        projects["anchor"] = Project(workdir, "anchor", src, listenfd=True)
        systems["anchor"] = DevAnchor(projects["anchor"], workdir)
        # The same, with a listen queue as long as mcluster's: under load only.
        systems["anchor_backlog"] = DevAnchor(projects["anchor"], workdir, backlog=ANCHOR_BACKLOG)
    out["systems"] = {name: system.command() for name, system in systems.items()}

    # Warm up each shared target dir: the full build, then one edit and an incremental build.
    for name, project in projects.items():
        print(f"bench: dev: warming up {project.target.name} (full cargo build of the copy)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        subprocess.run(["cargo", "build"], cwd=project.dir, env=project.env(), check=True, timeout=600)
        out[name]["cold_build"] = time.monotonic() - t0
        project.edit()
        project.cargo_build()

    # 1. The baseline: cargo build alone after the same edit, alternating between the copies.
    print(f"bench: dev: {DEV_EDITS} incremental cargo builds per copy", file=sys.stderr, flush=True)
    for name in projects:
        out[name]["baseline"] = []
    for i in range(DEV_EDITS):
        for name, project in projects.items():
            try:
                project.edit()
                out[name]["baseline"].append(project.cargo_build())
            except Exception as e:
                notes.append(f"dev {name} baseline build {i + 1}: {type(e).__name__}: {str(e).splitlines()[0]}")

    # 2 and 3, one system after the other, on one running instance each.
    for name, system in systems.items():
        if budget.left() < 60:
            notes.append(f"dev {name}: skipped (time budget)")
            continue
        server = None
        try:
            print(f"bench: dev: {name}: {system.command()}", file=sys.stderr, flush=True)
            server = system.start()
            if name != "anchor_backlog":
                print(f"bench: dev: {name}: {DEV_EDITS} edits, edit → served", file=sys.stderr, flush=True)
                out[name]["e2s"] = measure_edit_to_served(system, server)
            if budget.left() < 45:
                notes.append(f"dev {name} under load: skipped (time budget)")
                continue
            print(f"bench: dev: {name}: {DEV_EDITS} reloads under load ({CLIENTS} clients)", file=sys.stderr, flush=True)
            time.sleep(DEV_SETTLE)
            out[name]["load"] = measure_dev_load(system, server)
        except Exception as e:
            notes.append(f"dev {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print(f"bench: dev: {name} failed: {e}", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()
                if name == "mcluster":
                    # mcluster dev keeps a link to each build in <target>/debug/.mcluster-PID/
                    # and removes that directory when it exits.
                    left = sorted(str(d.relative_to(workdir)) for d in system.project.target.glob("*/.mcluster-*"))
                    if left:
                        notes.append(f"mcluster dev left {', '.join(left)} behind after SIGTERM")


def dev_report(dev: dict, notes: list[str]) -> list[str]:
    """The dev-mode section of results.md."""
    tools = dev.get("tools")
    names = ["mcluster", "anchor"]

    def cell(name: str, fn) -> str:
        if name.startswith("anchor") and not tools:
            return "not measured (systemfd/cargo-watch missing, see above)"
        try:
            return fn(dev[name])
        except (KeyError, ValueError, IndexError, statistics.StatisticsError):
            return "n/a"

    def e2s(key):
        return lambda r: summary([s[key] for s in r["e2s"]], want=DEV_EDITS)

    def overhead(r):
        med = statistics.median(s["served"] for s in r["e2s"]) - statistics.median(r["baseline"])
        per_edit = [s["served"] - s["self_build"] for s in r["e2s"]]
        return f"**{ms(med)}**; per edit, minus the tool's own build time: {ms(statistics.median(per_edit))} ({ms(min(per_edit))} – {ms(max(per_edit))})"

    def load(r):
        d = r["load"]
        return f"**{d['ok']} answered, {d['fail']} failed** ({d['reloads']}/{DEV_EDITS} reloads)"

    def latency(r):
        d = r["load"]
        return f"**p99 {ms(percentile(d['lat'], 0.99))}, max {ms(d['lat'][-1])}** (median {ms(percentile(d['lat'], 0.5))}; {d['over_1s']} took ≥ 1 s)"

    def slow_split(r):
        (a, b), (c, d) = r["load"]["slow"][0.1], r["load"]["slow"][1.0]
        return f"{a} / {b} (≥ 1 s: {c} / {d})"

    def steady(r):
        d = r["load"]
        return f"p99 {ms(percentile(d['steady'], 0.99))}, max {ms(d['steady'][-1])} ({len(d['steady'])} requests)"

    def load_served(r):
        return summary(r["load"]["served"], want=DEV_EDITS)

    def load_build(r):
        return summary(r["load"]["self_build"], want=DEV_EDITS)

    def load_rate(r):
        d = r["load"]
        return f"{(d['ok'] + d['fail']) / d['seconds']:.0f} req/s over {d['seconds']:.1f} s"

    rows = [
        ("Incremental `cargo build` alone, same edit (baseline)", lambda r: summary(r["baseline"], want=DEV_EDITS)),
        ("**Edit → `GET /` returns the new text**", e2s("served")),
        ("↳ overhead: edit → served − baseline (medians)", overhead),
        ("↳ the tool's own build time (mcluster: `built in`; cargo: `Finished … in`)", e2s("self_build")),
        ("↳ edit → every worker on the new build (mcluster's `rolled` line)", lambda r: summary([s["all_new"] for s in r["e2s"]], want=DEV_EDITS) if "all_new" in r["e2s"][0] else "— (one process)"),
        ("↳ edit → old app stopped, build started (cargo-watch's `[Running 'cargo run']`)", lambda r: summary([s["restart"] for s in r["e2s"]], want=DEV_EDITS) if "restart" in r["e2s"][0] else "— (old build serves until the new one is ready)"),
        (f"Requests during {DEV_EDITS} reloads under load ({CLIENTS} clients)", load),
        ("↳ request latency, whole run", latency),
        ("↳ request latency before the first edit (no reload)", steady),
        ("↳ requests ≥ 100 ms that started during a reload (edit → first new answer) / at other times", slow_split),
        ("↳ edit → first answer with the new text, under load", load_served),
        ("↳ the tool's own build time, under load", load_build),
        ("↳ load detail (client-bound)", load_rate),
    ]  # fmt: skip

    v = tools or {}
    lines = ["", "## Dev mode: edit → served", ""]
    lines.append(
        f"Both on copies of `examples/hello-app`, in debug (`cargo build`), {dev.get('cargo', 'cargo ?')}. "
        f"**mcluster** {git_describe()}: `{dev.get('systems', {}).get('mcluster', '?')}` ({DEV_SIZE} workers). "
        + (
            f"**Anchor**: systemfd {v.get('systemfd')} + cargo-watch {v.get('cargo-watch')}: "
            f"`{dev.get('systems', {}).get('anchor', '?')}`, the app's copy patched to take its socket with the `listenfd` crate (see notes)."
            if tools
            else f"**Anchor** (systemfd + cargo-watch): {dev.get('tools_why', 'not measured')}."
        )
        + f" Timings: median (min – max) of {DEV_EDITS} edits."
    )
    lines.append("")
    lines.append("| Measurement | mcluster dev | systemfd + cargo watch |")
    lines.append("|---|---|---|")
    for label, fn in rows:
        lines.append(f"| {label} | {cell(names[0], fn)} | {cell(names[1], fn)} |")
    same = "— (its listen queue is 4096 already)"
    for label, fn in (
        (f"Under load again, anchor with `systemfd --backlog {ANCHOR_BACKLOG}`", load),
        ("↳ request latency, whole run", latency),
        ("↳ requests ≥ 100 ms that started during a reload / at other times", slow_split),
        ("↳ edit → first answer with the new text, under load", load_served),
    ):
        lines.append(f"| {label} | {same} | {cell('anchor_backlog', fn)} |")
    lines.append("")
    lines.append("Notes:\n")
    cold = ", ".join(f"{n} {ms(dev[n]['cold_build'])}" for n in names if "cold_build" in dev.get(n, {}))
    lines.append(
        "- Each system has its own copy of the project and its own `CARGO_TARGET_DIR`, warmed up "
        f"first (full build: {cold}; then one edit and build), so every measured build is "
        "incremental: only `hello-app` is compiled (checked for the baseline builds). The copies "
        "depend on a snapshot of mcluster's sources taken at the start (`default-features = false`, "
        "the worker helpers only). An edit rewrites `src/main.rs` in place with a new answer text "
        "(`Hello #N from worker …`)."
    )
    lines.append(
        f"- *Baseline*: `cargo build` run by this script on the edited copy, with the tool not "
        f"running, {DEV_EDITS} edits, alternating between the copies. *Edit → served*: from just "
        f"before the write to the completion of the first `GET /` whose answer has the new text "
        f"(a fresh connection every {DEV_POLL * 1000:.0f} ms; a GET that waits in the listen queue "
        f"while nothing accepts is not retried, so it completes as soon as the new process answers); "
        f"{DEV_SETTLE:.0f} s of quiet before each edit. It includes each tool's default debounce: "
        "mcluster dev's `--cooldown` 100 ms, cargo-watch's `--delay` 0.5 s."
    )
    lines.append(
        "- mcluster dev builds while the old workers serve, then rolls: every replacement starts at "
        "once (`--surge all`), and each old worker is stopped when its own replacement is ready "
        "(`READY=1`); the first new worker answers before the `rolled` line. cargo-watch stops the app first (SIGTERM to its process group, and waits), "
        "then runs `cargo run`, which builds and execs the app; systemfd keeps the socket open, so "
        "connections wait in its listen queue while nothing accepts. systemfd's default `--backlog` "
        "is 1, kept as users run it: with 8 clients that queue overflows (during a restart, and "
        "at other times whenever the app falls behind for a moment), Linux drops the handshake "
        "packet, and TCP retransmits it only after a second or more: the ≥ 1 s requests. The run "
        f"with `--backlog {ANCHOR_BACKLOG}` shows the restart alone."
    )
    lines.append(
        "- Where the anchor's failures come from: cargo-watch runs `sh -c 'cargo run; echo …'` in "
        "a process group of its own, and `cargo run` execs the app, so the group is sh and the app. "
        "On a change it sends SIGTERM to the group and waits for sh, which dies at once; then, "
        "before starting the next run, it SIGKILLs the old group (watchexec 1.17's `spawn` calls "
        "`kill()` on the previous child first). The app, which drains on SIGTERM, is killed within "
        "a millisecond or two: the requests it had accepted get a reset or a truncated or empty "
        "answer. Connections still in the listen queue are not lost (systemfd holds the socket)."
    )
    lines.append(
        "- Why the anchor's copy uses `listenfd`: it is what axum/actix apps run under systemfd "
        "use (`listenfd::ListenFd::from_env().take_tcp_listener(0)`, which accepts the unset "
        "LISTEN_PID of `systemfd --no-pid`), so the anchor runs as its users run it. The rest of "
        "the app is unchanged; `worker::ready()` is a no-op there (no NOTIFY_SOCKET)."
    )
    lines.append(
        f"- *Under load*: {CLIENTS} Python client threads, a fresh connection per `GET /` to "
        f"127.0.0.1, reading to EOF, {DEV_CLIENT_TIMEOUT:.0f} s timeout (so a request waiting out a "
        f"build counts as slow, not failed); 1 s of load, then {DEV_EDITS} edits, each followed by "
        f"waiting for an answer with the new text and for the reload to end, then {DEV_SETTLE:.0f} s "
        "of load; 0.5 s more. Latency is from connect to EOF, over answered requests. A failure is "
        "a connect/read error or a reply that is not `200` with the text. The builds share the 2 "
        "cores with the clients, hence the slower builds under load."
    )
    labels = {"mcluster": "mcluster", "anchor": "anchor", "anchor_backlog": f"anchor --backlog {ANCHOR_BACKLOG}"}
    lines += failures_and_notes([(label, dev.get(name, {})) for name, label in labels.items()], notes)
    for name, label in labels.items():
        r = dev.get(name)
        if not r:
            continue
        parts = []
        if r.get("baseline"):
            parts.append("baseline build: " + ", ".join(f"{x * 1000:.0f}" for x in r["baseline"]))
        for key, what in (("served", "edit → served"), ("self_build", "own build time"), ("all_new", "edit → rolled"), ("restart", "edit → [Running]")):
            vals = [s[key] for s in r.get("e2s", []) if key in s]
            if vals:
                parts.append(f"{what}: " + ", ".join(f"{x * 1000:.0f}" for x in vals))
        if r.get("load"):
            parts.append("under load, edit → served: " + ", ".join(f"{x * 1000:.0f}" for x in r["load"]["served"]))
            parts.append("own build time: " + ", ".join(f"{x * 1000:.0f}" for x in r["load"]["self_build"]))
            parts.append("5 slowest requests (latency at start time after the last edit): " + ", ".join(r["load"]["slowest_at"]))
            if r["load"]["failures_at"]:
                parts.append("failed requests (time to failure at start time after the last edit, first 10): " + ", ".join(r["load"]["failures_at"]))
        if parts:
            lines.append(f"- {label}: " + "; ".join(parts))
    lines.append("")
    return lines


# --------------------------------------------------------------------------------------------
# CPU time of one process, in nanoseconds, sampled on a thread: what a master spends while its
# workers start.
# --------------------------------------------------------------------------------------------


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


def cpu_share(parts: list[tuple[float, float]]) -> float | None:
    """Total CPU over total wall time of several windows: a share of one core."""
    wall = sum(w for _, w in parts)
    return sum(c for c, _ in parts) / wall if wall > 0 else None


def pct(x: float) -> str:
    return f"{x * 100:.1f} %"


# --------------------------------------------------------------------------------------------
# Dev switch (issue 8 row a): `mcluster dev -n 8` against systemfd + cargo-watch and systemfd +
# watchexec, on bench/apps/slow-axum (axum, 0.3 s of start-up, no READY=1). A client loop
# records every answer's text and time; an edit's "first new" and "last old" answers come
# from it.
# --------------------------------------------------------------------------------------------

SLOW_AXUM = BENCH / "apps" / "slow-axum"
DS_TARGET = ROOT / "target" / "bench-slow-axum"  # kept between runs: the full build is once
DS_HEADING = "## Dev switch: `mcluster dev -n 8` on an axum app with 0.3 s of start-up"
DS_SIZE = 8
DS_EDITS = 5  # per system
DS_CLIENTS = 4  # client threads, each a loop of fresh connections
DS_PAUSE = 0.002  # between two requests of one client thread
DS_SETTLE = 1.0  # quiet time (load only) before each edit
DS_TAIL = 1.0  # watched after the reload's end for old answers still coming
DS_BUDGET = 200.0  # seconds for the section once the app is built and the tools installed
DS_STARTUP = 0.3  # the app's start-up work (its START_UP)
DS_BACKLOG = 4096  # the anchors' listen queue (systemfd's default is 1): mcluster's SOMAXCONN
DS_ANSWER = re.compile(r'^const ANSWER: &str = "slow-axum v\d+";$', re.M)
DS_MARK = re.compile(rb"slow-axum v(\d+) pid=(\d+)")


class SlowAxum:
    """A copy of bench/apps/slow-axum in a temp dir (what the tools watch), built into
    target/bench-slow-axum; every system runs this one copy, one after the other."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "slow-axum"
        shutil.copytree(SLOW_AXUM, self.dir, ignore=shutil.ignore_patterns("target"))
        self.main = self.dir / "src" / "main.rs"
        self.source = self.main.read_text()
        if not DS_ANSWER.search(self.source):
            raise RuntimeError(f"{SLOW_AXUM}/src/main.rs: no `const ANSWER` line to edit")
        self.version = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CARGO_TARGET_DIR"] = str(DS_TARGET)
        env["PATH"] = f"{TOOLS / 'bin'}:{env.get('PATH', '')}"
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "PORT"):
            env.pop(key, None)
        return env

    def edit(self) -> int:
        """Rewrites main.rs in place with `ANSWER` = `slow-axum vN`, N new; returns N."""
        self.version += 1
        text = DS_ANSWER.sub(f'const ANSWER: &str = "slow-axum v{self.version}";', self.source)
        self.main.write_text(text)
        return self.version

    def build(self) -> float:
        t0 = time.monotonic()
        out = subprocess.run(["cargo", "build"], cwd=self.dir, env=self.env(), capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"cargo build of slow-axum failed:\n{out.stderr[-2000:]}")
        return time.monotonic() - t0


class DsMcluster:
    key = "mcluster"
    label = "mcluster dev -n 8"

    def __init__(self, app: SlowAxum, workdir: Path) -> None:
        self.app = app
        self.workdir = workdir

    def command(self) -> str:
        return f"CARGO_TARGET_DIR=… mcluster dev -n {DS_SIZE} -l 127.0.0.1:0 --manifest-path <copy>/Cargo.toml"

    def start(self) -> Server:
        argv = [str(MCLUSTER), "dev", "-n", str(DS_SIZE), "-l", "127.0.0.1:0", "--manifest-path", str(self.app.dir / "Cargo.toml")]
        server = Server("mcluster dev", argv, cwd=self.app.dir, env=self.app.env(), scope=self.workdir)
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$", timeout=DEV_WAIT)
        server.port = int(m.group(1))
        server.wait_line(rf"^mcluster: all {DS_SIZE} workers ready in ", timeout=DEV_WAIT)
        return server

    def wait_reload(self, server: Server, mark: int, t0: float) -> dict:
        """The reload's line: `… changed → built in B → rolled 8 workers in R (switch S)`."""
        _, t, m = server.wait_line(r"^mcluster: \S.* changed → (.*)$", mark, timeout=DEV_WAIT)
        done = re.match(r"built in (\S+) → rolled (\d+) workers in (\S+)(?: \(switch (\S+)\))?$", m.group(1))
        if not done:
            raise RuntimeError(f"reload failed: {m.group(0)}")
        with server.cond:
            rules = [
                rm.group(1)
                for _, text in server.lines[mark:]
                if (rm := re.match(r"^mcluster: w\d+ ready \(pid \d+, generation \d+\): (.*)$", text))
            ]
        return {
            "t_end": t,
            "build": parse_human(done.group(1)),
            "roll": parse_human(done.group(3)),
            "switch": parse_human(done.group(4)) if done.group(4) else None,
            "rules": rules,
        }


class DsAnchor:
    """systemfd holding the socket, a watcher restarting `cargo run` in it."""

    def __init__(self, key: str, app: SlowAxum, workdir: Path) -> None:
        self.key = key
        self.app = app
        self.workdir = workdir
        if key == "cargo-watch":
            self.watch = ["cargo", "watch", "-x", "run"]
            self.label = "systemfd + cargo watch"
        else:
            self.watch = ["watchexec", "-r", "-e", "rs", "--", "cargo", "run"]
            self.label = "systemfd + watchexec"

    def command(self) -> str:
        return f"CARGO_TARGET_DIR=… systemfd --no-pid --backlog {DS_BACKLOG} -s http::127.0.0.1:PORT -- {' '.join(self.watch)}"

    def start(self) -> Server:
        def spawn(port: int) -> Server:
            argv = [
                str(TOOLS / "bin" / "systemfd"), "--no-pid", "--backlog", str(DS_BACKLOG),
                "-s", f"http::127.0.0.1:{port}", "--", *self.watch,
            ]  # fmt: skip
            server = Server(self.label, argv, cwd=self.app.dir, env=self.app.env(), scope=self.workdir, merge_stdout=True)
            server.port = port
            return server

        return start_on_free_port(spawn, lambda server: wait_systemfd_serving(server, DEV_WAIT))

    def wait_reload(self, server: Server, mark: int, t0: float) -> dict:
        """cargo's `Finished … in B` line of the rebuild."""
        _, t, m = server.wait_line(r"^\s*Finished `dev` profile .* in (\S+)$", mark, timeout=DEV_WAIT)
        return {"t_end": t, "build": parse_human(m.group(1))}


def ds_client(port: int, stop: threading.Event, out: list) -> None:
    """GET / on a fresh connection, again and again: (start, end, version) per request, version
    -1 for a failure (connect/read error, not a 200 with the text)."""
    while not stop.is_set():
        t = time.monotonic()
        err = None
        try:
            reply = http_get(port, DEV_CLIENT_TIMEOUT)
            m = DS_MARK.search(reply)
            version = int(m.group(1)) if m and reply.startswith(b"HTTP/1.1 200") else -1
            if version < 0:
                err = f"bad reply ({len(reply)} bytes, ends {reply[-24:]!r})"
        except OSError as e:
            version = -1
            err = type(e).__name__ + (f" errno {e.errno}" if e.errno else "")
        out.append((t, time.monotonic(), version, err))
        time.sleep(DS_PAUSE)


def ds_measure(system, server: Server, budget: Budget, sampler: CpuSampler | None) -> list[dict]:
    """DS_EDITS edits under the client loop; per edit, from the write: first new answer, last
    old answer, the mixed window (old answers after the first new one) or the gap (no answer
    between the last old and the first new), the tool's own build time."""
    records: list[list] = [[] for _ in range(DS_CLIENTS)]
    stop = threading.Event()
    threads = [threading.Thread(target=ds_client, args=(server.port, stop, rec), daemon=True) for rec in records]
    for th in threads:
        th.start()
    edits = []
    try:
        for _ in range(DS_EDITS):
            if budget.left() < 15:
                break
            time.sleep(DS_SETTLE)
            mark = len(server.lines)
            t0 = time.monotonic()
            n = system.app.edit()
            deadline = t0 + DEV_WAIT
            while not any(x[2] == n for rec in records for x in rec[-50:]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer with slow-axum v{n}:\n{server.tail()}")
                time.sleep(0.005)
            reload = system.wait_reload(server, mark, t0)
            time.sleep(DS_TAIL)
            edits.append({"t0": t0, "n": n, "reload": reload})
    finally:
        stop.set()
        for th in threads:
            th.join(DEV_CLIENT_TIMEOUT + 2)
    answers = sorted(x for rec in records for x in rec)
    samples = []
    for i, e in enumerate(edits):
        t0, n = e["t0"], e["n"]
        t_next = edits[i + 1]["t0"] if i + 1 < len(edits) else math.inf
        window = [a[:3] for a in answers if t0 <= a[1] < t_next]
        new = [end for _, end, v in window if v == n]
        old = [end for _, end, v in window if 0 <= v < n]
        first_new = min(new) - t0
        last_old = (max(old) - t0) if old else 0.0
        after_first = [v for _, end, v in window if end > t0 + first_new and v >= 0]
        failures = [
            f"{err}: started at +{(start - t0) * 1000:.0f} ms, failed after {(end - start) * 1000:.0f} ms"
            for start, end, _, err in answers
            if err and t0 <= end < t_next
        ]
        reload = e["reload"]
        sample = {
            "first_new": first_new,
            "last_old": last_old,
            "mixed": max(0.0, last_old - first_new),
            "gap": max(0.0, first_new - last_old),
            "old_after_new": sum(1 for v in after_first if v < n),
            "answers_after_new": len(after_first),
            "failed": sum(1 for _, end, v in window if v < 0),
            "failures": failures,
            "slowest": max((end - start for start, end, v in window if v >= 0), default=0.0),
            "build": reload["build"],
            "t_end": reload["t_end"] - t0,
        }
        for key in ("roll", "switch", "rules"):
            if key in reload:
                sample[key] = reload[key]
        if sampler is not None and "roll" in reload:
            # The roll: from the build's end (the line's time less the roll's own duration) to
            # the line; the master's CPU over it.
            t_roll = reload["t_end"] - reload["roll"]
            sample["master_cpu"] = sampler.between(t_roll, reload["t_end"])
            # The replacements' start-up (0.3 s): all spawned, none ready; the master probes.
            sample["boot_cpu"] = sampler.between(t_roll + 0.03, t_roll + DS_STARTUP - 0.03)
        samples.append(sample)
    return samples


def run_dev_switch(workdir: Path, notes: list[str], out: dict) -> None:
    versions, why = install_dev_tools(("systemfd", "cargo-watch"))
    wversions, wwhy = install_dev_tools(("systemfd", "watchexec"))
    out["tools"] = {**(versions or {}), **(wversions or {})}
    out["tools_why"] = {"cargo-watch": why, "watchexec": wwhy}
    out["cargo"] = subprocess.run(["cargo", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    app = SlowAxum(workdir)
    print(f"bench: dev switch: building slow-axum into {DS_TARGET} (the first time: axum, tokio, hyper)", file=sys.stderr, flush=True)
    out["warm_build"] = app.build()
    app.edit()
    out["incremental_build"] = app.build()
    systems = [DsMcluster(app, workdir)]
    if versions is not None:
        systems.append(DsAnchor("cargo-watch", app, workdir))
    if wversions is not None:
        systems.append(DsAnchor("watchexec", app, workdir))
    out["systems"] = {s.key: (s.label, s.command()) for s in systems}
    budget = Budget(DS_BUDGET)
    for system in systems:
        if budget.left() < 30:
            notes.append(f"{system.label}: skipped (time budget)")
            continue
        server = sampler = None
        try:
            print(f"bench: dev switch: {system.command()}", file=sys.stderr, flush=True)
            server = system.start()
            sampler = CpuSampler(server.pid) if system.key == "mcluster" else None
            out[system.key] = ds_measure(system, server, budget, sampler)
        except Exception as e:
            notes.append(f"{system.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print(f"bench: dev switch: {system.label} failed: {e}", file=sys.stderr, flush=True)
        finally:
            if sampler is not None:
                sampler.stop()
            if server is not None:
                server.stop()


def measure_dev_switch() -> tuple[dict, list[str]]:
    out: dict = {}
    notes: list[str] = []
    load_start = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-switch-"))
    t_start = time.monotonic()
    try:
        run_dev_switch(workdir, notes, out)
    except Exception as e:
        notes.append(f"dev switch section: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"bench: dev switch section failed: {e}", file=sys.stderr, flush=True)
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    out["elapsed"] = time.monotonic() - t_start
    notes.append(f"load average (1/5/15 min) at the start of this section: {load_start}; at the end: {loadavg()}")
    return out, notes


def ds_report(ds: dict, notes: list[str]) -> list[str]:
    keys = ["mcluster", "cargo-watch", "watchexec"]
    labels = {"mcluster": "mcluster dev -n 8", "cargo-watch": "systemfd + cargo watch", "watchexec": "systemfd + watchexec"}

    def cell(key: str, fn) -> str:
        if key != "mcluster" and not ds.get(key):
            why = ds.get("tools_why", {}).get(key)
            return f"not measured ({key} {why})" if why else "not measured (see notes)"
        try:
            return fn(ds[key])
        except (KeyError, ValueError, IndexError, TypeError, statistics.StatisticsError):
            return "n/a"

    def col(field, fmt=ms):
        return lambda r: summary([s[field] for s in r], fmt, want=DS_EDITS)

    def overhead(r):
        return summary([s["first_new"] - s["build"] - DS_STARTUP for s in r], want=DS_EDITS)

    def old_share(r):
        old = sum(s["old_after_new"] for s in r)
        total = sum(s["answers_after_new"] for s in r)
        return f"{old} of {total}"

    def rules(r):
        counts: dict[str, int] = {}
        for s in r:
            for rule in s.get("rules", []):
                counts[rule] = counts.get(rule, 0) + 1
        return ", ".join(f"{rule}: {n}" for rule, n in sorted(counts.items())) or "n/a"

    def cpu(r, field="master_cpu"):
        parts = [s[field] for s in r if s.get(field)]
        share = cpu_share(parts)
        each = [c / w for c, w in parts]
        return f"**{pct(share)}** of a core (per roll {pct(min(each))} – {pct(max(each))})" if share is not None else "n/a"

    def na(_):
        return "— (one process)"

    rows = [
        ("**Save → first new answer**", col("first_new")),
        ("↳ minus the tool's own build time and the app's 0.3 s start-up", overhead),
        ("↳ the tool's own build time (mcluster: `built in`; cargo: `Finished … in`)", col("build")),
        ("**Save → last old answer**", col("last_old")),
        ("**Mixed window** (last old − first new, when positive)", lambda r: col("mixed")(r) if r[0].get("roll") is not None else "0 (one process): " + col("mixed")(r)),
        ("↳ old answers after the first new one (of all answers from it to the next edit)", old_share),
        ("**No answer between last old and first new** (downtime)", col("gap")),
        ("↳ slowest request of the reload (a request waiting in the listen queue)", col("slowest")),
        ("↳ failed requests", lambda r: str(sum(s["failed"] for s in r))),
        ("Roll: build done → 8 workers on the new build (mcluster's `rolled … in`)", lambda r: col("roll")(r) if r[0].get("roll") is not None else na(r)),
        ("↳ `switch` in mcluster's line (first replacement ready → roll end)", lambda r: col("switch")(r) if r[0].get("switch") is not None else na(r)),
        ("Master CPU during the roll (build done → reload line)", lambda r: cpu(r) if r[0].get("master_cpu") else "—"),
        ("**Master CPU while the 8 replacements start** (30 ms – 270 ms into the roll)", lambda r: cpu(r, "boot_cpu") if r[0].get("boot_cpu") else "—"),
    ]
    lines = [DS_HEADING, ""]
    tools = ds.get("tools", {})
    lines.append(
        f"The app is [bench/apps/slow-axum](apps/slow-axum/src/main.rs): axum 0.8 on tokio, its socket from "
        f"`listenfd` (`ListenFd::from_env().take_tcp_listener(0)`), 0.3 s of start-up (a sleep) before it serves, "
        f"no `READY=1`, axum's graceful shutdown on SIGTERM; debug builds ({ds.get('cargo', 'cargo ?')}). "
        f"**mcluster** {git_describe()}: `{ds.get('systems', {}).get('mcluster', ('', '?'))[1]}` (defaults: `--ready auto`, `--surge all`). "
        + "".join(
            f"**{labels[k]}** ({', '.join(f'{t} {tools[t]}' for t in ('systemfd', k) if t in tools)}): `{ds['systems'][k][1]}`. "
            for k in keys[1:] if k in ds.get("systems", {})
        )
        + f"Timings: median (min – max) of {DS_EDITS} edits per system, each under a client loop ({DS_CLIENTS} threads, "
        f"fresh connection per `GET /`, {DS_PAUSE * 1000:.0f} ms pause)."
    )
    lines.append("")
    lines.append("| Measurement | " + " | ".join(labels[k] for k in keys) + " |")
    lines.append("|---|---|---|---|")
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cell(k, fn) for k in keys) + " |")
    lines.append("")
    lines.append("Notes:\n")
    lines.append(
        "- Every time is from just before the script writes `src/main.rs` (a new `const ANSWER`) to the end of an answer "
        f"read by the client loop: {DS_CLIENTS} Python threads, each a loop of `GET /` on a fresh connection to 127.0.0.1 "
        f"({DS_PAUSE * 1000:.0f} ms apart, {DEV_CLIENT_TIMEOUT:.0f} s timeout), recording every answer's text. *First new*: the "
        "earliest answer with the edit's text; *last old*: the latest answer with an older text, up to the next edit (each edit "
        f"waits for the reload's end and {DS_TAIL:.0f} s more). Each tool's debounce is in these times (mcluster's `--cooldown` 100 ms, "
        "cargo-watch's `--delay` 0.5 s, watchexec's 50 ms)."
    )
    lines.append(
        "- The anchors run one app process: cargo-watch/watchexec stop it (SIGTERM) and then build and start the new one, "
        "so old and new never answer side by side (their mixed window is zero by construction) and, between the two, "
        "nothing answers: requests wait in systemfd's listen queue for the build and the start-up. mcluster dev builds while "
        "the old workers serve, then starts all 8 replacements at once and stops each old worker when its replacement is "
        "seen accepting. systemfd runs with `--backlog 4096` (mcluster's listen queue); its default, 1, would add "
        "SYN-retransmit seconds under this load (the dev-mode section shows that cost)."
    )
    lines.append(
        "- *Master CPU during the roll*: the mcluster master's CPU time (`/proc/PID/task/*/schedstat`, ns, sampled every 10 ms) "
        "from the end of the build (the reload line's time less its `rolled … in`) to the reload line, over that wall time: "
        "spawning 8 replacements, probing `/proc` of each while it starts, stopping and reaping the old ones. *While the 8 "
        "replacements start*: the same from 30 ms to 270 ms into the roll, when every replacement has been spawned and none "
        "has finished its 0.3 s start-up, so the master does little but probe them. (`mcluster dev` does not log each worker's "
        "`ready` line, so how each was seen is not shown here; the roll section shows it for `start`.)"
    )
    lines.append(
        f"- The app was built once into `target/bench-slow-axum` (kept between runs; this run: {ms(ds['warm_build']) if 'warm_build' in ds else '?'}), "
        f"then edited and built again ({ms(ds['incremental_build']) if 'incremental_build' in ds else '?'}), so that every measured build is "
        "incremental. The three systems run one after the other on one copy."
    )
    if any(s["failed"] for k in keys for s in ds.get(k) or []):
        lines.append(
            "- Failed requests (their kinds and times are in the raw samples): the app is stopped with SIGTERM by every "
            "system (mcluster: each old worker once its replacement is ready; the anchors: the one app, at the change), "
            "and axum's graceful shutdown then closes, unanswered, the connections it has accepted but whose request "
            "it has not read yet: hyper's HTTP/1 graceful shutdown closes an inactive connection at once "
            "(hyperium/hyper#3808, #3792). A `bad reply (0 bytes)` or a reset a few milliseconds into a request that "
            "started at the stop is that (cargo-watch, besides, SIGKILLs the app's process group about a millisecond after "
            "the SIGTERM: see the dev-mode section). The roll section's worker, which answers every connection it "
            "accepted, has none."
        )
    for note in notes:
        lines.append(f"- {'' if note.startswith('load average') else 'Problem: '}{note}")
    lines.append("")
    lines.append("Raw samples (ms), per edit:\n")
    for k in keys:
        r = ds.get(k)
        if not r:
            continue
        fields = ["first_new", "last_old", "mixed", "gap", "build", "slowest"] + [f for f in ("roll", "switch") if r[0].get(f) is not None]
        parts = [f"{f}: " + ", ".join(f"{s[f] * 1000:.0f}" for s in r) for f in fields]
        for field, what in (("master_cpu", "master CPU"), ("boot_cpu", "master CPU while starting")):
            if r[0].get(field):
                parts.append(f"{what}: " + ", ".join(f"{c * 1000:.1f} ms in {w * 1000:.0f} ms" for c, w in (s[field] for s in r if s.get(field))))
        failures = [f for s in r for f in s.get("failures", [])]
        if failures:
            parts.append("failed requests: " + "; ".join(failures[:10]))
        lines.append(f"- {labels[k]}: " + "; ".join(parts))
    lines.append("")
    return lines


# --------------------------------------------------------------------------------------------
# Roll (issue 8 row b): `mcluster start -n 8` against gunicorn -w 8, workers that boot for 1 s
# and send no READY=1; SIGHUP → all new ready, all old exited; requests under load.
# --------------------------------------------------------------------------------------------

BOOT_WORKER = BENCH / "apps" / "boot_worker.py"
RB_HEADING = "## Roll: `mcluster start -n 8`, workers with 1 s of boot, no `READY=1`"
RB_SIZE = 8
RB_BOOT = 1.0
RB_ROLLS = 5  # idle, then as many under load
RB_CLIENTS = 4
RB_GAP = 1.0  # between two rolls (of load, under load)
RB_BUDGET = 150.0

GUNICORN_BOOT_APP = '''\
import os
import time

time.sleep(%r)  # the app's boot, in each worker (no --preload)

def app(environ, start_response):
    body = b"pid=%%d\\n" %% os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
''' % RB_BOOT


class RbMcluster(Mcluster):
    def command(self) -> str:
        return f"mcluster start -n {RB_SIZE} -l 127.0.0.1:0 -- python3 bench/apps/boot_worker.py {RB_BOOT:g}"

    def start(self, size: int) -> Server:
        argv = [str(MCLUSTER), "start", "-n", str(size), "-l", "127.0.0.1:0", "--", sys.executable, str(BOOT_WORKER), f"{RB_BOOT:g}"]
        server = Server("mcluster", argv)
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$")
        server.port = int(m.group(1))
        server.size = size
        return server

    def wait_new(self, server: Server, mark: int, old: set[int]) -> float:
        _, t, _ = server.wait_line(r"^mcluster: rolled \d+ workers? to generation \d+ in ", mark)
        return t

    def rules(self, server: Server, mark: int) -> list[str]:
        with server.cond:
            return [
                m.group(1)
                for _, text in server.lines[mark:]
                if (m := re.match(r"^mcluster: w\d+ ready \(pid \d+, generation \d+\): (.*)$", text))
            ]

    def first_ready(self, server: Server, mark: int) -> float | None:
        with server.cond:
            return next((t for t, text in server.lines[mark:] if re.match(r"^mcluster: w\d+ ready ", text)), None)

    def own_boots(self, server: Server, mark: int) -> list[float]:
        """Each new worker's own exec → poll time, as it printed it."""
        with server.cond:
            return [
                float(m.group(1))
                for _, text in server.lines[mark:]
                if (m := re.search(r"boot_worker: serving pid=\d+ after ([\d.]+)s", text))
            ]

    def seen_after(self, server: Server, mark: int) -> list[float]:
        """Per new worker: from the moment it started polling (CLOCK_MONOTONIC, as it printed
        it) to the arrival of the master's `ready` line for its pid."""
        serving: dict[int, float] = {}
        ready: dict[int, float] = {}
        with server.cond:
            for t, text in server.lines[mark:]:
                if m := re.search(r"boot_worker: serving pid=(\d+) after \S+ at ([\d.]+)$", text):
                    serving[int(m.group(1))] = float(m.group(2))
                elif m := re.match(r"^mcluster: w\d+ ready \(pid (\d+),", text):
                    ready[int(m.group(1))] = t
        return [ready[pid] - serving[pid] for pid in ready if pid in serving]


class RbGunicorn(Gunicorn):
    def __init__(self, exe: Path, version: str, workdir: Path) -> None:
        super().__init__(exe, version, workdir)
        (workdir / "benchapp.py").write_text(GUNICORN_BOOT_APP)

    def command(self) -> str:
        return f"gunicorn -k sync -w {RB_SIZE} -b 127.0.0.1:PORT benchapp:app (the app sleeps {RB_BOOT:g} s at import)"

    def wait_new(self, server: Server, mark: int, old: set[int]) -> float:
        deadline = time.monotonic() + WAIT
        index = mark
        while True:
            index, _, _ = server.wait_line(r"^BENCH ready pid=", index, deadline - time.monotonic())
            new = [(t, pid) for t, pid in self._ready_pids(server, mark) if pid not in old]
            if len(new) >= server.size:
                return new[server.size - 1][0]
            index += 1

    def rules(self, server: Server, mark: int) -> list[str]:
        return []

    def first_ready(self, server: Server, mark: int) -> float | None:
        ready = self._ready_pids(server, mark)
        return ready[0][0] if ready else None

    def own_boots(self, server: Server, mark: int) -> list[float]:
        return []

    def seen_after(self, server: Server, mark: int) -> list[float]:
        return []


def rb_client(system, port: int, stop: threading.Event, out: list) -> None:
    """(start, latency, error or None) per request; fresh connection each."""
    request = system.request()
    while not stop.is_set():
        t = time.monotonic()
        try:
            reply = exchange(port, request, CLIENT_TIMEOUT)
            err = None if system.valid(reply) else f"bad reply {reply[:40]!r}"
        except OSError as e:
            err = type(e).__name__ + (f" errno {e.errno}" if e.errno else "")
        out.append((t, time.monotonic() - t, err))


def rb_roll(system, server: Server, sampler: CpuSampler) -> dict:
    old = system.workers(server)
    mark = len(server.lines)
    gone: dict[str, float] = {}
    t0 = time.monotonic()
    # The old workers are watched from the SIGHUP on, on a thread: gunicorn's exit before its
    # new workers are ready.
    watcher = threading.Thread(target=lambda: gone.update(t=wait_exited(old, t0)), daemon=True)
    watcher.start()
    os.kill(server.pid, signal.SIGHUP)
    t_new = system.wait_new(server, mark, old)
    watcher.join(WAIT + 1)
    if "t" not in gone:
        raise TimeoutError(f"old workers {sorted(old)} still running")
    t_gone = gone["t"]
    time.sleep(0.05)  # a CPU sample after t_new
    out = {
        "t0": t0,
        "new": t_new - t0,
        "gone": t_gone - t0,
        "done": max(t_new, t_gone) - t0,
        "master_cpu": sampler.between(t0, t_new),
        "rules": system.rules(server, mark),
    }
    # The boot phase: from 0.3 s after the SIGHUP (every replacement spawned) to the first one
    # ready; the master only probes the starting workers then.
    first = system.first_ready(server, mark)
    if first is not None and first - t0 > 0.5:
        out["boot_cpu"] = sampler.between(t0 + 0.3, first - 0.02)
    own = system.own_boots(server, mark)
    if own:
        out["own_boot"] = max(own)
    out["seen_after"] = system.seen_after(server, mark)
    return out


def rb_measure(system, budget: Budget) -> dict:
    server = system.start(RB_SIZE)
    sampler = None
    stop = threading.Event()
    records: list[list] = [[] for _ in range(RB_CLIENTS)]
    threads = [threading.Thread(target=rb_client, args=(system, server.port, stop, rec), daemon=True) for rec in records]
    out: dict = {"idle": [], "load": []}
    try:
        system.wait_ready(server)
        sampler = CpuSampler(server.pid)
        time.sleep(0.5)
        for _ in range(RB_ROLLS):
            if budget.left() < 20:
                break
            out["idle"].append(rb_roll(system, server, sampler))
            time.sleep(0.5)
        for th in threads:
            th.start()
        time.sleep(RB_GAP)
        t_load = time.monotonic()
        for _ in range(RB_ROLLS):
            if budget.left() < 10:
                break
            out["load"].append(rb_roll(system, server, sampler))
            time.sleep(RB_GAP)
    finally:
        stop.set()
        for th in threads:
            if th.is_alive() or th.ident is not None:
                th.join(CLIENT_TIMEOUT + 2)
        if sampler is not None:
            sampler.stop()
        server.stop()
    reqs = sorted(x for rec in records for x in rec)
    steady = sorted(lat for t, lat, err in reqs if err is None and t + lat < t_load)
    windows = [(r["t0"], r["t0"] + r["done"]) for r in out["load"]]
    during = [x for x in reqs if any(w0 <= x[0] <= w1 for w0, w1 in windows)]
    errors: dict[str, int] = {}
    for _, _, err in reqs:
        if err:
            errors[err] = errors.get(err, 0) + 1
    lat = sorted(lat for _, lat, err in reqs if err is None)
    out.update({
        "ok": len(lat),
        "fail": sum(errors.values()),
        "errors": errors,
        "lat": lat,
        "steady": steady,
        "during_max": max((lat for _, lat, err in during if err is None), default=0.0),
        "during_n": len(during),
        "seconds": (reqs[-1][0] - reqs[0][0]) if reqs else 0.0,
    })  # fmt: skip
    return out


def rb_one(system, budget: Budget) -> list[dict]:
    """RB_ROLLS rolls of a one-worker cluster, no load."""
    server = system.start(1)
    sampler = None
    rolls = []
    try:
        system.wait_ready(server)
        sampler = CpuSampler(server.pid)
        time.sleep(0.5)
        for _ in range(RB_ROLLS):
            if budget.left() < 5:
                break
            rolls.append(rb_roll(system, server, sampler))
            time.sleep(0.5)
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()
    return rolls


def measure_roll_boot() -> tuple[dict, list[str]]:
    out: dict = {}
    notes: list[str] = []
    load_start = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-roll-"))
    t_start = time.monotonic()
    try:
        gunicorn_exe, gunicorn_version = install_gunicorn()
        systems = [RbMcluster()]
        if gunicorn_exe is not None:
            systems.append(RbGunicorn(gunicorn_exe, gunicorn_version, workdir))
        else:
            out["gunicorn_why"] = gunicorn_version
        out["gunicorn_version"] = gunicorn_version if gunicorn_exe else None
        out["systems"] = {s.name: s.command() for s in systems}
        budget = Budget(RB_BUDGET)
        for system in systems:
            print(f"bench: roll: {system.command()}", file=sys.stderr, flush=True)
            try:
                out[system.name] = rb_measure(system, budget)
            except Exception as e:
                notes.append(f"{system.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                print(f"bench: roll: {system.name} failed: {e}", file=sys.stderr, flush=True)
        # The master's CPU while one worker starts: `-n 1`, rolls without load.
        print("bench: roll: mcluster start -n 1, master CPU while one worker boots", file=sys.stderr, flush=True)
        try:
            out["one"] = rb_one(systems[0], budget)
        except Exception as e:
            notes.append(f"mcluster -n 1: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    out["elapsed"] = time.monotonic() - t_start
    notes.append(f"load average (1/5/15 min) at the start of this section: {load_start}; at the end: {loadavg()}")
    return out, notes


def rb_report(rb: dict, notes: list[str]) -> list[str]:
    names = ["mcluster", "gunicorn"]

    def cell(name: str, fn) -> str:
        if name not in rb:
            return "not measured" + (f": gunicorn {rb['gunicorn_why']}" if name == "gunicorn" and rb.get("gunicorn_why") else " (see notes)")
        try:
            return fn(rb[name])
        except (KeyError, ValueError, IndexError, TypeError, statistics.StatisticsError):
            return "n/a"

    def col(which, field):
        return lambda r: summary([s[field] for s in r[which]], want=RB_ROLLS)

    def cpu(r, field="master_cpu"):
        parts = [s[field] for s in r["idle"] + r["load"] if s.get(field)]
        each = [c / w for c, w in parts]
        return f"**{pct(cpu_share(parts))}** of a core (per roll {pct(min(each))} – {pct(max(each))})"

    def seen(r):
        values = sorted(x for s in r["idle"] + r["load"] for x in s.get("seen_after", []))
        if not values:
            return "—"
        return f"**{ms(statistics.median(values))}**, {ms(percentile(values, 0.9))}, {ms(values[-1])}"

    def rules(r):
        counts: dict[str, int] = {}
        for s in r["idle"] + r["load"]:
            for rule in s["rules"]:
                counts[rule] = counts.get(rule, 0) + 1
        return ", ".join(f"{rule}: {n}" for rule, n in sorted(counts.items())) or "— (`post_worker_init`)"

    rows = [
        ("**SIGHUP → all old exited**", col("idle", "gone")),
        ("SIGHUP → all 8 new ready (mcluster: `rolled` line; gunicorn: 8th new `post_worker_init`)", col("idle", "new")),
        ("SIGHUP → new ready and old exited", col("idle", "done")),
        ("↳ how the new workers were seen ready", rules),
        (f"**Requests during {RB_ROLLS} rolls under load** ({RB_CLIENTS} clients)", lambda r: f"**{r['fail']} failed** of {r['ok'] + r['fail']} ({len(r['load'])}/{RB_ROLLS} rolls)"),
        ("↳ slowest request that started during a roll", lambda r: ms(r["during_max"])),
        ("↳ latency p99 / max, whole run", lambda r: f"{ms(percentile(r['lat'], 0.99))} / {ms(r['lat'][-1])}"),
        ("↳ latency p99 / max before the first roll under load", lambda r: f"{ms(percentile(r['steady'], 0.99))} / {ms(r['steady'][-1])}"),
        ("↳ SIGHUP → new ready and old exited, under load", col("load", "done")),
        ("↳ SIGHUP → all old exited, under load", col("load", "gone")),
        ("↳ the slowest new worker's own boot, fork → `poll` (as it printed it; Python's start-up included)",
         lambda r: summary([s["own_boot"] for s in r["idle"]], want=RB_ROLLS) if r["idle"][0].get("own_boot") else "— (forked, not exec'd)"),
        ("↳ a new worker in `poll` → the master's `ready` line for it (each of 80: median, p90, max)", seen),
        ("↳ SIGHUP → all new ready, less that slowest own boot", lambda r: summary([s["new"] - s["own_boot"] for s in r["idle"]], want=RB_ROLLS) if r["idle"][0].get("own_boot") else "—"),
        ("Master CPU, SIGHUP → all new ready", cpu),
        ("**Master CPU while the workers boot** (0.3 s after the SIGHUP → first new ready: probing only)", lambda r: cpu(r, "boot_cpu")),
    ]
    one = rb.get("one") or []
    one_cpu = [s["boot_cpu"] for s in one if s.get("boot_cpu")]
    if one_cpu:
        each = [c / w for c, w in one_cpu]
        rows.append((
            "**Master CPU while one worker boots** (`-n 1`, same window)",
            lambda r: f"**{pct(cpu_share(one_cpu))}** of a core (per roll {pct(min(each))} – {pct(max(each))}); "
            f"roll {summary([s['new'] for s in one], want=RB_ROLLS)}" if r is rb.get("mcluster") else "—",
        ))  # fmt: skip
    lines = [RB_HEADING, ""]
    lines.append(
        f"Workers that boot for {RB_BOOT:g} s and send no `READY=1`. **mcluster** {git_describe()}: `{rb.get('systems', {}).get('mcluster', '?')}` "
        f"(defaults: `--ready auto`, `--surge all`); the worker, [bench/apps/boot_worker.py](apps/boot_worker.py), sleeps {RB_BOOT:g} s, "
        "then serves fd 3 with a `poll` loop, one line in and one out; on SIGTERM it stops accepting and exits after the "
        "connection it is serving. "
        + (f"**gunicorn** {rb['gunicorn_version']}: `{rb['systems'].get('gunicorn')}`, sync workers, the app module sleeping "
           f"{RB_BOOT:g} s when each worker imports it. " if rb.get("gunicorn_version") else "")
        + f"Timings: median (min – max) of {RB_ROLLS} rolls."
    )  # fmt: skip
    lines.append("")
    lines.append("| Measurement | mcluster | gunicorn |")
    lines.append("|---|---|---|")
    for label, fn in rows:
        lines.append(f"| {label} | {cell(names[0], fn)} | {cell(names[1], fn)} |")
    lines.append("")
    lines.append("Notes:\n")
    lines.append(
        f"- Each system: started with {RB_SIZE} workers, then {RB_ROLLS} SIGHUPs without load (the first three rows), then "
        f"{RB_CLIENTS} Python client threads (fresh connection per request, {CLIENT_TIMEOUT:.0f} s timeout) and {RB_ROLLS} more "
        f"SIGHUPs, {RB_GAP:g} s apart. Old workers are seen exited by polling `/proc/PID/stat` every 2 ms (a zombie counts). "
        "A failure is a connect/read error or an invalid answer."
    )
    lines.append(
        "- The HUPs differ. mcluster boots all 8 replacements at once (`--surge all`) while the old workers serve, and stops each "
        "old worker once its replacement is seen accepting (`/proc`: here a thread in `poll` on the inherited socket). "
        "gunicorn forks 8 new workers and SIGTERMs the 8 old ones at once, without waiting for the new ones to load the app: "
        "for the boot, nothing accepts, and requests wait in the listen queue (the slowest-request row)."
    )
    lines.append(
        "- *Master CPU*: the master's (gunicorn: the arbiter's) CPU time from `/proc/PID/task/*/schedstat` (ns), sampled every "
        "10 ms, over all 10 rolls: total CPU over total wall time. *SIGHUP → all new ready* includes forking and exec'ing the "
        "replacements, relaying their output, stopping and reaping the old ones; *while the workers boot* is the stretch "
        "from 0.3 s after the SIGHUP (all 8 spawned) to the first new worker ready, where mcluster's master only probes "
        "`/proc` of the starting workers (the issue's target: under 2 % of a core). Clock ticks would be too coarse "
        "(10 ms), hence `schedstat`."
    )
    mc = rb.get("mcluster")
    if mc and one_cpu:
        eight = cpu_share([s["boot_cpu"] for s in mc["idle"] + mc["load"] if s.get("boot_cpu")])
        one_share = cpu_share(one_cpu)
        if eight is not None and one_share is not None:
            lines.append(
                f"- The master's probing grows with the number of workers starting at once: {pct(eight)} of a core while "
                f"{RB_SIZE} boot, i.e. {pct(eight / RB_SIZE)} per starting worker, against {pct(one_share)} while one boots "
                f"alone. mcluster probes each starting worker every 10 ms (`PROBE_INTERVAL` in src/supervisor.rs), so this "
                f"is about {eight / RB_SIZE * 10_000:.0f} µs of master CPU per probe of one worker with {RB_SIZE} starting "
                f"({one_share * 10_000:.0f} µs per 10 ms tick with one), wake-up of the master's loop included."
            )
    for name in names:
        r = rb.get(name)
        if r and r.get("errors"):
            lines.append(f"- {name} failures by kind: " + ", ".join(f"{k}: {n}" for k, n in r["errors"].items()))
    for note in notes:
        lines.append(f"- {'' if note.startswith('load average') else 'Problem: '}{note}")
    lines.append("")
    lines.append("Raw samples (ms), per roll:\n")
    for name in names:
        r = rb.get(name)
        if not r:
            continue
        parts = []
        for which in ("idle", "load"):
            for field in ("gone", "new", "done"):
                parts.append(f"{which} {field}: " + ", ".join(f"{s[field] * 1000:.0f}" for s in r[which]))
        if r["idle"] and r["idle"][0].get("own_boot"):
            parts.append("slowest own boot: " + ", ".join(f"{s['own_boot'] * 1000:.0f}" for s in r["idle"] + r["load"] if s.get("own_boot")))
        for field, what in (("master_cpu", "master CPU"), ("boot_cpu", "master CPU while booting")):
            parts.append(f"{what}: " + ", ".join(f"{c * 1000:.1f} ms in {w * 1000:.0f} ms" for c, w in (s[field] for s in r["idle"] + r["load"] if s.get(field))))
        lines.append(f"- {name}: " + "; ".join(parts))
    if rb.get("one"):
        one = rb["one"]
        lines.append(
            "- mcluster `-n 1`: new: " + ", ".join(f"{s['new'] * 1000:.0f}" for s in one)
            + "; master CPU while booting: "
            + ", ".join(f"{c * 1000:.1f} ms in {w * 1000:.0f} ms" for c, w in (s["boot_cpu"] for s in one if s.get("boot_cpu")))
        )
    lines.append("")
    return lines


def put_section(heading: str, section: list[str], before: str | None = None) -> None:
    """Replaces the section of bench/results.md that starts at `heading` (to the next `## `);
    if there is none, puts it before the first heading starting with `before`, or at the end."""
    text = RESULTS.read_text() if RESULTS.exists() else "# mcluster benchmark results\n\n"
    lines = text.split("\n")
    body = "\n".join(section).rstrip("\n").split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + body + [""] + lines[end:]
    elif before is not None and any(line.startswith(before) for line in lines):
        at = next(i for i, line in enumerate(lines) if line.startswith(before))
        lines = lines[:at] + body + [""] + lines[at:]
    else:
        lines = [*lines[: len(lines) - (1 if lines and lines[-1] == "" else 0)], "", *body, ""]
    RESULTS.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Live reload (issue 11): save → the page repainted with the new text in headless Chromium, for
# `mcluster dev` (its live-reload channel, the script put in by mcluster::serve::livereload) and
# for tower-livereload under systemfd + cargo-watch, on one app: bench/apps/livereload-axum.
# --------------------------------------------------------------------------------------------

LR_APP = BENCH / "apps" / "livereload-axum"
LR_WORK = ROOT / "target" / "bench-livereload"  # the app's copy, mcluster's snapshot, the target dir
LR_HEADING = "## Live reload: save → page repainted in headless Chromium"
LR_EDITS = 5  # per system
LR_POLL = 0.020  # between two reads of the page's DOM
LR_WAIT = 90.0  # the longest one edit may take to show (build included)
LR_SETTLE = 1.0  # quiet time before each edit: the page loaded, its reload channel connected
LR_BUDGET = 240.0  # seconds for the section once the app is built and the tools installed
LR_TEXT = re.compile(r'^const TEXT: &str = "livereload v\d+";$', re.M)
LR_CHROMIUM = Path("/usr/bin/chromium")
LR_CHROMEDRIVER = Path("/usr/bin/chromedriver")
LR_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1000,700",
)  # fmt: skip
LR_READ = "var e = document.getElementById('text'); return e ? e.textContent : null;"


class LrApp:
    """A copy of bench/apps/livereload-axum in a temp dir (what the tools watch: not under
    target/, which .gitignore hides from both watchers), its mcluster dependency pointed at a
    snapshot of mcluster's sources in target/bench-livereload (edits to src/ during the run
    must not rebuild it), built into target/bench-livereload/target (kept between runs)."""

    def __init__(self, workdir: Path) -> None:
        LR_WORK.mkdir(parents=True, exist_ok=True)
        src = LR_WORK / "mcluster-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        for name in ("Cargo.toml", "Cargo.lock"):
            shutil.copy2(ROOT / name, src / name)
        for name in ("src", "fixtures", "tests"):
            shutil.copytree(ROOT / name, src / name)  # copy2: the times kept, no needless rebuild
        self.dir = workdir / "livereload-axum"
        shutil.copytree(LR_APP, self.dir, ignore=shutil.ignore_patterns("target"))
        manifest = self.dir / "Cargo.toml"
        text = manifest.read_text()
        if 'path = "../../.."' not in text:
            raise RuntimeError(f"{LR_APP}/Cargo.toml: no mcluster path dependency")
        manifest.write_text(text.replace('path = "../../.."', f'path = "{src}"'))
        self.main = self.dir / "src" / "main.rs"
        self.source = self.main.read_text()
        if not LR_TEXT.search(self.source):
            raise RuntimeError(f"{LR_APP}/src/main.rs: no `const TEXT` line to edit")
        # Written anew, not with the time copytree kept: an older time than the last build's
        # would leave that build's binary (and its text) in place.
        self.main.write_text(self.source)
        self.version = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CARGO_TARGET_DIR"] = str(LR_WORK / "target")
        env["PATH"] = f"{TOOLS / 'bin'}:{env.get('PATH', '')}"
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "PORT",
                    "MCLUSTER_LIVERELOAD", "MCLUSTER_LIVERELOAD_ADDR"):  # fmt: skip
            env.pop(key, None)
        return env

    def edit(self) -> int:
        """Rewrites main.rs in place with `TEXT` = `livereload vN`, N new; returns N."""
        self.version += 1
        self.main.write_text(LR_TEXT.sub(f'const TEXT: &str = "livereload v{self.version}";', self.source))
        return self.version

    def build(self, feature: str) -> float:
        t0 = time.monotonic()
        out = subprocess.run(
            ["cargo", "build", "--features", feature], cwd=self.dir, env=self.env(),
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"cargo build --features {feature} of livereload-axum failed:\n{out.stderr[-2000:]}")
        return time.monotonic() - t0


class LrMcluster:
    key = "mcluster"
    label = "mcluster dev"
    feature = "mcluster"

    def __init__(self, app: LrApp) -> None:
        self.app = app

    def command(self) -> str:
        return ("CARGO_TARGET_DIR=… mcluster dev -n 1 -l 127.0.0.1:0 --livereload 127.0.0.1:PORT2 "
                "--features mcluster --manifest-path <copy>/Cargo.toml")  # fmt: skip

    def start(self) -> Server:
        argv = [
            str(MCLUSTER), "dev", "-n", "1", "-l", "127.0.0.1:0", "--livereload", f"127.0.0.1:{free_port()}",
            "--features", "mcluster", "--manifest-path", str(self.app.dir / "Cargo.toml"),
        ]  # fmt: skip
        server = Server("mcluster dev", argv, cwd=self.app.dir, env=self.app.env(), scope=self.app.dir)
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$", timeout=LR_WAIT)
        server.port = int(m.group(1))
        server.wait_line(r"^mcluster: (?:all 1 workers?|the worker is) ready in ", timeout=LR_WAIT)
        return server

    def build_time(self, server: Server, mark: int) -> float:
        """mcluster's own build time, from the reload's line."""
        _, _, m = server.wait_line(r"^mcluster: \S.* changed → (.*)$", mark, timeout=LR_WAIT)
        done = re.match(r"built in (\S+) → ", m.group(1))
        if not done:
            raise RuntimeError(f"reload failed: {m.group(0)}")
        return parse_human(done.group(1))


class LrAnchor:
    key = "anchor"
    label = "tower-livereload, systemfd + cargo watch"
    feature = "tower"

    def __init__(self, app: LrApp) -> None:
        self.app = app

    def command(self) -> str:
        return "CARGO_TARGET_DIR=… systemfd --no-pid -s http::127.0.0.1:PORT -- cargo watch -x 'run --features tower'"

    def start(self) -> Server:
        def spawn(port: int) -> Server:
            argv = [
                str(TOOLS / "bin" / "systemfd"), "--no-pid", "-s", f"http::127.0.0.1:{port}",
                "--", "cargo", "watch", "-x", "run --features tower",
            ]  # fmt: skip
            server = Server(self.label, argv, cwd=self.app.dir, env=self.app.env(), scope=self.app.dir, merge_stdout=True)
            server.port = port
            return server

        return start_on_free_port(spawn, lambda server: wait_systemfd_serving(server, LR_WAIT))

    def build_time(self, server: Server, mark: int) -> float:
        """cargo's `Finished … in B` line of the rebuild."""
        _, _, m = server.wait_line(r"^\s*Finished `dev` profile .* in (\S+)$", mark, timeout=LR_WAIT)
        return parse_human(m.group(1))


def lr_browser():
    """A headless Chromium driven by chromedriver (the flags tests/browser/driver.py uses)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(LR_CHROMIUM)
    for flag in LR_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(LR_CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(LR_WAIT)
    driver.set_script_timeout(LR_WAIT)
    return driver


def lr_text(driver) -> str | None:
    try:
        return driver.execute_script(LR_READ)
    except Exception:  # the page between two documents: read again
        return None


def lr_measure(system, server: Server, driver, budget: Budget) -> list[dict]:
    """Opens the page once, then LR_EDITS edits: write main.rs, read the page's text every
    LR_POLL until it is the new one (the page reloads by itself); the tool's build time."""
    driver.get(f"http://127.0.0.1:{server.port}/")
    want = f"livereload v{system.app.version}"
    if lr_text(driver) != want:
        raise RuntimeError(f"the page does not show {want!r}: {driver.page_source[:300]!r}")
    if "<script" not in driver.page_source:
        raise RuntimeError("no live-reload <script> in the page")
    samples = []
    for _ in range(LR_EDITS):
        if budget.left() < 15:
            break
        time.sleep(LR_SETTLE)
        mark = len(server.lines)
        t0 = time.monotonic()
        n = system.app.edit()
        want = f"livereload v{n}"
        deadline = t0 + LR_WAIT
        while lr_text(driver) != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {want!r}:\n{server.tail()}")
            time.sleep(LR_POLL)
        t1 = time.monotonic()
        samples.append({"shown": t1 - t0, "build": system.build_time(server, mark)})
    return samples


def run_livereload(workdir: Path, notes: list[str], out: dict) -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise RuntimeError("Python selenium is not installed: nothing measured") from None
    for path in (LR_CHROMIUM, LR_CHROMEDRIVER):
        if not path.exists():
            raise RuntimeError(f"{path} missing: nothing measured")
    versions, why = install_dev_tools(("systemfd", "cargo-watch"))
    out["tools"], out["tools_why"] = versions or {}, why
    out["cargo"] = subprocess.run(["cargo", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    out["chromium"] = subprocess.run([str(LR_CHROMIUM), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    app = LrApp(workdir)
    systems = [LrMcluster(app)]
    if versions is not None:
        systems.append(LrAnchor(app))
    out["systems"] = {s.key: (s.label, s.command()) for s in systems}
    budget = Budget(LR_BUDGET)
    for system in systems:
        if budget.left() < 30:
            notes.append(f"{system.label}: skipped (time budget)")
            continue
        server = driver = None
        try:
            # Its own feature built just before: the binary of the other feature is in the same
            # place, and the first measured build must not be the one that replaces it.
            print(f"bench: live reload: building livereload-axum --features {system.feature} into {LR_WORK / 'target'}", file=sys.stderr, flush=True)
            out[f"warm_build_{system.key}"] = system.app.build(system.feature)
            print(f"bench: live reload: {system.command()}", file=sys.stderr, flush=True)
            server = system.start()
            driver = lr_browser()
            out[system.key] = lr_measure(system, server, driver, budget)
        except Exception as e:
            notes.append(f"{system.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print(f"bench: live reload: {system.label} failed: {e}", file=sys.stderr, flush=True)
        finally:
            if driver is not None:
                driver.quit()
            if server is not None:
                server.stop()


def measure_livereload() -> tuple[dict, list[str]]:
    out: dict = {}
    notes: list[str] = []
    load_start = loadavg()
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-livereload-"))
    try:
        run_livereload(workdir, notes, out)
    except Exception as e:
        notes.append(f"live-reload section: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"bench: live-reload section failed: {e}", file=sys.stderr, flush=True)
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    out["elapsed"] = time.monotonic() - t_start
    notes.append(f"load average (1/5/15 min) at the start of this section: {load_start}; at the end: {loadavg()}")
    return out, notes


def lr_report(lr: dict, notes: list[str]) -> list[str]:
    keys = ["mcluster", "anchor"]
    labels = {"mcluster": "mcluster dev -n 1", "anchor": "tower-livereload under systemfd + cargo watch"}

    def cell(key: str, fn) -> str:
        if not lr.get(key):
            why = lr.get("tools_why") if key == "anchor" else ""
            return f"not measured (systemfd/cargo-watch {why})" if why else "not measured (see notes)"
        try:
            return fn(lr[key])
        except (KeyError, ValueError, TypeError, statistics.StatisticsError):
            return "n/a"

    def col(field):
        return lambda r: summary([s[field] for s in r], want=LR_EDITS)

    def after_build(r):
        return summary([s["shown"] - s["build"] for s in r], want=LR_EDITS)

    rows = [
        ("save → page shows the new text", col("shown")),
        ("the tool's own build time (its log)", col("build")),
        ("the rest: debounce, restart or roll, reload signal, page load", after_build),
    ]
    lines = [
        LR_HEADING,
        "",
        f"`python3 bench/run.py --livereload-only`; run {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M')} UTC, mcluster {git_describe()}, {lr.get('cargo', 'cargo ?')}, "
        f"{lr.get('chromium', 'Chromium ?')}, selenium + chromedriver; "
        f"tools: {', '.join(f'{k} {v}' for k, v in lr.get('tools', {}).items()) or 'none'}; "
        f"tower-livereload 0.10.3 (its defaults). The app: `bench/apps/livereload-axum` (axum 0.8, plain "
        "`axum::serve` with listenfd), `/` an HTML page with `<p id=\"text\">livereload vN</p>`, built with "
        "`--features mcluster` (the `mcluster::serve::livereload` middleware) or `--features tower` "
        "(`tower_livereload::LiveReloadLayer`). Each system: the page opened once in headless Chromium, then "
        f"{LR_EDITS} edits of the text in `src/main.rs` ({LR_SETTLE:.0f} s apart), each timed from the write "
        f"until the page's DOM (read every {LR_POLL * 1000:.0f} ms, nothing else done to the page) shows the "
        "new text. Median (min – max).",
        "",
        "| | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(cell(k, fn) for k in keys) + " |")
    lines.append("")
    for key in keys:
        if key in lr.get("systems", {}):
            lines.append(f"- {lr['systems'][key][0]}: `{lr['systems'][key][1]}`")
    builds = [f"`--features {f}` {lr[f'warm_build_{k}']:.1f} s" for k, f in (("mcluster", "mcluster"), ("anchor", "tower")) if f"warm_build_{k}" in lr]
    if builds:
        lines.append(f"- each feature built just before its system ran (the other feature's binary replaced): {', '.join(builds)}")
    for key in keys:
        if lr.get(key):
            raw = ", ".join(f"{s['shown'] * 1000:.0f}/{s['build'] * 1000:.0f}" for s in lr[key])
            lines.append(f"- raw samples, {labels[key]} (save → shown / build, ms): {raw}")
    lines.append(f"- section time: {lr.get('elapsed', 0):.0f} s")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("")
    return lines


# --------------------------------------------------------------------------------------------
# Setup: build, venv, versions
# --------------------------------------------------------------------------------------------


def git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return "git " + out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def build() -> None:
    # --bins as well: `--examples` alone builds only the examples (and the library).
    cmd = ["cargo", "build", "--release", "--bins", "--examples", "--locked"]
    print("bench: " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=600)
    for path in (MCLUSTER, ECHO, BENCH_WORKER):
        if not path.exists():
            raise RuntimeError(f"{path} missing after the build")


def install_gunicorn() -> tuple[Path | None, str]:
    """(the gunicorn executable, its version) or (None, why not)."""
    py = VENV / "bin" / "python"
    exe = VENV / "bin" / "gunicorn"
    try:
        if not py.exists():
            print(f"bench: creating {VENV}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        probe = [str(py), "-c", "import gunicorn; print(gunicorn.__version__)"]
        found = subprocess.run(probe, capture_output=True, text=True, timeout=60)
        if found.returncode != 0:
            print("bench: pip install gunicorn", file=sys.stderr, flush=True)
            subprocess.run(
                [str(py), "-m", "pip", "install", "--quiet", "gunicorn"], check=True, timeout=180
            )
            found = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
        if not exe.exists():
            return None, f"{exe} missing after install"
        return exe, found.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"could not be installed ({e})"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    v = seconds * 1000
    if v < 10:
        return f"{v:.2f} ms"
    if v < 100:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms"


def plural(n: int) -> str:
    return f"{n} worker" + ("" if n == 1 else "s")


def summary(values: list[float], fmt=ms, want: int = REPS) -> str:
    if not values:
        return "n/a"
    text = f"**{fmt(statistics.median(values))}** ({fmt(min(values))} – {fmt(max(values))})"
    if len(values) < want:
        text += f" [{len(values)}/{want} runs]"
    return text


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def run_samples(label: str, fn, budget: Budget, notes: list[str]) -> list[dict]:
    out = []
    for i in range(REPS):
        if budget.left() < 5:
            notes.append(f"{label}: stopped after {i} runs (time budget)")
            break
        try:
            out.append(fn())
        except Exception as e:
            notes.append(f"{label}, run {i + 1}: {type(e).__name__}: {str(e).splitlines()[0]}")
            print(f"bench: {label} run {i + 1} failed: {e}", file=sys.stderr, flush=True)
    return out


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def measure_dev() -> tuple[dict, list[str]]:
    """The dev-mode section: its results and notes."""
    dev: dict = {}
    notes: list[str] = []
    load_start = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-dev-"))
    try:
        run_dev_section(workdir, notes, dev)
    except Exception as e:
        notes.append(f"dev section: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"bench: dev section failed: {e}", file=sys.stderr, flush=True)
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    notes.append(f"load average (1/5/15 min) at the start of this section: {load_start}; at the end: {loadavg()}")
    return dev, notes


# `--X-only` flags: what measures the section, what reports it, its heading, and where it goes
# when results.md has none yet (before the heading starting so, else at the end).

# --------------------------------------------------------------------------------------------
# Scale: `mcluster start -n N` for large N, mcluster alone.
# --------------------------------------------------------------------------------------------

SCALE_HEADING = "## Scale: `mcluster start -n 1000` and `-n 4000`"
SCALE_SIZES = (1000, 4000)
SCALE_REPS = 3
SCALE_WAIT = 180.0  # the longest a start-up may take before it counts as failed


def scale_status_time(cwd: Path, timeout: float = 30.0) -> float | None:
    """How long `mcluster status --json` takes against the master started in `cwd` (its
    control socket is that directory's); None if it failed."""
    t0 = time.monotonic()
    try:
        done = subprocess.run([str(MCLUSTER), "status", "--json"], cwd=cwd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - t0 if done.returncode == 0 else None


def measure_scale() -> tuple[dict, list[str]]:
    """Launch → `all N workers ready` for each size (or the one line refusing it), the master's
    RSS and a `status` round trip once ready, and the stop."""
    notes: list[str] = []
    out: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-scale-"))
    for size in SCALE_SIZES:
        samples = []
        for _ in range(SCALE_REPS):
            argv = [
                str(MCLUSTER), "start", "-n", str(size), "--ready", "notify", "-l", "127.0.0.1:0",
                "--kill-timeout", "5s", "--ready-timeout", "120s", "--", str(ECHO),
            ]  # fmt: skip
            print(f"bench: mcluster: start to ready, {plural(size)}", file=sys.stderr, flush=True)
            server = Server("mcluster", argv, cwd=workdir)
            try:
                pattern = rf"^mcluster: (?:all {size} workers ready in (\S+)|error: (.*))$"
                _, t, m = server.wait_line(pattern, timeout=SCALE_WAIT)
                if m.group(2):
                    out[size] = {"refused": m.group(2)}
                    break
                sample = {"ready": t - server.t_launch, "rss_kib": vm_rss_kib(server.pid)}
                sample["status"] = scale_status_time(workdir)
                t0 = time.monotonic()
                server.stop(timeout=60)
                sample["stop"] = time.monotonic() - t0
                samples.append(sample)
            except (TimeoutError, RuntimeError) as e:
                notes.append(f"{plural(size)}: {type(e).__name__}: {str(e).splitlines()[0]}")
                break
            finally:
                server.kill()
        if samples:
            out[size] = {"samples": samples}
    shutil.rmtree(workdir, ignore_errors=True)
    return out, notes


def scale_report(sc: dict, notes: list[str]) -> list[str]:
    out = [SCALE_HEADING, ""]
    out.append(
        f"`mcluster start -n N --ready notify -- fixture-echo`, mcluster alone, {SCALE_REPS} runs "
        f"each; median (min – max). Machine: {os.cpu_count()} CPUs, open-file limit "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, process limit "
        f"{resource.getrlimit(resource.RLIMIT_NPROC)[0]}. mcluster {git_describe()}.\n"
    )
    out.append("| Workers | Launch → all ready | `status` once ready | Stop (SIGTERM → exited) | Master RSS |")
    out.append("|---|---|---|---|---|")
    for size in SCALE_SIZES:
        r = sc.get(size)
        if r is None:
            out.append(f"| {size} | not measured (see notes) | | | |")
        elif "refused" in r:
            out.append(f"| {size} | refused: `mcluster: error: {r['refused']}` | | | |")
        else:
            ss = r["samples"]
            status = [s["status"] for s in ss if s["status"] is not None]
            out.append(
                f"| {size} | {summary([s['ready'] for s in ss], want=SCALE_REPS)} "
                f"| {summary(status, want=SCALE_REPS)} | {summary([s['stop'] for s in ss], want=SCALE_REPS)} "
                f"| {summary([s['rss_kib'] for s in ss], mib, want=SCALE_REPS)} |"
            )
    out.append("")
    out.append(
        "- A master runs at most 2048 workers (its guard tracks 4096 process groups, and a roll "
        "runs a replacement beside each worker), fewer when the open-file or process limit is "
        "low; beyond, it refuses with one line and exit status 2, before it binds or spawns "
        "anything."
    )
    for note in notes:
        out.append(f"- Problem: {note}")
    out.append("")
    return out


ONE_SECTION = {
    "--scale-only": (measure_scale, scale_report, SCALE_HEADING, None),
    "--dev-switch-only": (measure_dev_switch, ds_report, DS_HEADING, None),
    "--livereload-only": (measure_livereload, lr_report, LR_HEADING, None),
    "--roll-only": (measure_roll_boot, rb_report, RB_HEADING, None),
    "--throughput-only": (measure_throughput, throughput_report, THROUGHPUT_HEADING, "## Dev mode"),
}


def main() -> int:
    t_all = time.monotonic()
    load_start = loadavg()
    notes: list[str] = []
    try:
        build()
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        # The previous bench/results.md is left as it was.
        print(f"bench: the build failed, nothing was measured: {e}", file=sys.stderr)
        return 1
    if "--dev-only" in sys.argv[1:]:
        # For working on the benchmark: the dev section alone, printed, results.md untouched.
        dev, dev_notes = measure_dev()
        print("\n".join(dev_report(dev, dev_notes)))
        return 0
    # One section alone (for working on the benchmark): measured, printed, and put in place of
    # that section of bench/results.md (or added); the other sections are left as they are.
    for flag, (measure, report, heading, before) in ONE_SECTION.items():
        if flag in sys.argv[1:]:
            values, notes = measure()
            section = report(values, notes)
            print("\n".join(section))
            put_section(heading, section, before)
            return 0
    if "--axum-only" in sys.argv[1:]:
        # For working on the benchmark: the axum section alone, printed, results.md untouched.
        print("\n".join(axum_section()))
        return 0
    gunicorn_exe, gunicorn_version = install_gunicorn()

    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-"))
    systems = [Mcluster()]
    if gunicorn_exe is not None:
        systems.append(Gunicorn(gunicorn_exe, gunicorn_version, workdir))
    budget = Budget(BUDGET)
    results: dict[str, dict] = {s.name: {} for s in systems}

    try:
        # Runs alternate between the systems so a drift in machine load hits both alike.
        for size in START_SIZES:
            for system in systems:
                print(f"bench: {system.name}: start to ready, {plural(size)}", file=sys.stderr, flush=True)
                results[system.name][f"start{size}"] = run_samples(
                    f"{system.name} start {size}", lambda: measure_startup(system, size), budget, notes
                )
        for system in systems:
            print(f"bench: {system.name}: RSS and roll, {ROLL_SIZE} workers", file=sys.stderr, flush=True)
            results[system.name]["roll"] = run_samples(
                f"{system.name} roll", lambda: measure_roll(system), budget, notes
            )
        for system in systems:
            if budget.left() < 30:
                notes.append(f"{system.name} zero-drop: skipped (time budget)")
                continue
            print(f"bench: {system.name}: zero-drop under {LOAD_ROLLS} rolls", file=sys.stderr, flush=True)
            try:
                results[system.name]["load"] = measure_zero_drop(system)
            except Exception as e:
                notes.append(f"{system.name} zero-drop: {type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)

    notes.append(
        f"load average (1/5/15 min) at the start: {load_start}; at the end: {loadavg()} "
        "(other work on the machine inflates and scatters the timings, gunicorn's the most)"
    )

    tp, tp_notes = measure_throughput()
    dev, dev_notes = measure_dev()
    ds, ds_notes = measure_dev_switch()
    rb, rb_notes = measure_roll_boot()
    lr, lr_notes = measure_livereload()
    text = report(systems, results, gunicorn_version if gunicorn_exe else None,
                  gunicorn_version, notes, time.monotonic() - t_all)  # fmt: skip
    text += "\n" + "\n".join(throughput_report(tp, tp_notes)) + "\n"
    text += "\n".join(dev_report(dev, dev_notes)) + "\n"
    text += "\n".join(ds_report(ds, ds_notes)) + "\n"
    text += "\n".join(rb_report(rb, rb_notes)) + "\n"
    text += "\n".join(lr_report(lr, lr_notes)) + "\n"
    text += "\n".join(axum_section())  # the axum section: its own table
    RESULTS.write_text(text)
    print(text)
    return 0


def report(systems, results, gunicorn_ok, gunicorn_why, notes, elapsed) -> str:
    names = ["mcluster", "gunicorn"]

    def cell(name: str, fn) -> str:
        if name not in results:
            return "not measured: gunicorn " + gunicorn_why
        try:
            return fn(results[name])
        except (KeyError, ValueError, statistics.StatisticsError):
            return "n/a"

    def startup(size):
        return lambda r: summary([s["ready"] for s in r[f"start{size}"]])

    def load(r):
        d = r["load"]
        return f"**{d['fail']} failed** of {d['ok'] + d['fail']} ({d['rolls']}/{LOAD_ROLLS} rolls)"

    def load_extra(r):
        d = r["load"]
        return (
            f"{(d['ok'] + d['fail']) / d['seconds']:.0f} req/s over {d['seconds']:.1f} s; "
            f"{d['pids']} worker pids answered"
        )

    rows = [
        ("Launch → all ready, 1 worker", startup(1)),
        ("Launch → all ready, 16 workers", startup(16)),
        (f"Master RSS, {ROLL_SIZE} workers ready", lambda r: summary([s["rss_kib"] for s in r["roll"]], mib)),
        (f"Roll {ROLL_SIZE} workers: SIGHUP → all new ready", lambda r: summary([s["roll_new"] for s in r["roll"]])),
        (f"Roll {ROLL_SIZE} workers: SIGHUP → new ready and old exited", lambda r: summary([s["roll_done"] for s in r["roll"]])),
        (f"Requests during {LOAD_ROLLS} rolls under load ({CLIENTS} clients)", load),
        ("↳ load detail (client-bound, not a throughput benchmark)", load_extra),
        ("↳ roll time under load, SIGHUP → new ready and old exited", lambda r: summary(r["load"]["roll_times"], want=LOAD_ROLLS)),
    ]  # fmt: skip

    out = []
    out.append("# mcluster benchmark results\n")
    out.append(
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by `python3 bench/run.py` "
        f"in {elapsed:.0f} s. Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}. mcluster {git_describe()} (release build, "
        f"`fixture-echo` workers); "
        + (f"gunicorn {gunicorn_ok} (sync workers, trivial WSGI app)." if gunicorn_ok
           else f"gunicorn {gunicorn_why}.")  # fmt: skip
        + f" Timings: median (min – max) of {REPS} runs.\n"
    )
    out.append("| Measurement | mcluster | gunicorn |")
    out.append("|---|---|---|")
    for label, fn in rows:
        out.append(f"| {label} | {cell(names[0], fn)} | {cell(names[1], fn)} |")
    out.append("")
    mc = results.get("mcluster", {})
    selfrep = {size: [s.get("self_reported") for s in mc.get(f"start{size}", [])] for size in START_SIZES}
    out.append("Notes:\n")
    out.append(
        "- *Launch → all ready* is measured by this script for both, from just before the "
        "master is spawned to the arrival on its stderr of: mcluster's `all N workers ready` "
        "line (every worker sent READY=1); gunicorn's Nth `post_worker_init` hook line (every "
        "worker has loaded the app and is about to enter its accept loop). It includes the "
        "master's own start-up (for gunicorn, the Python interpreter and its imports). "
        "mcluster's self-reported times (from its first spawn): "
        + "; ".join(f"{plural(size)}: {', '.join(str(x) for x in v)}" for size, v in selfrep.items())
        + "."
    )
    out.append(
        "- gunicorn's arbiter sleeps a random 0–100 ms after each worker it spawns at start-up "
        "(`spawn_workers`, to spread the load), so its 16-worker start-up includes about 0.8 s "
        "of deliberate sleeping. On SIGHUP it does not sleep."
    )
    out.append(
        "- *Roll*: the two HUPs differ. mcluster starts every replacement at once (`--surge all`, "
        "its default) and stops each old worker only once its own replacement sent READY=1; *all "
        "new ready* is its `rolled` line. "
        "gunicorn reloads its config and app, forks all N new workers at once and SIGTERMs the N "
        "old ones right away without waiting for the new ones to boot (capacity can briefly dip; "
        "connections wait in the shared listen queue); *all new ready* is the Nth new "
        "`post_worker_init` line. *Old exited* is seen by polling /proc every 2 ms (a zombie "
        "counts as exited), for both. The echo fixture is ready about 1 ms after exec; the roll of "
        "workers that take 1 s to boot is its own section below."
    )
    out.append(
        "- *Master RSS* is VmRSS of the master process only (mcluster; gunicorn's arbiter), "
        "read 0.5 s after all workers are ready."
    )
    out.append(
        f"- *Requests during rolls*: {CLIENTS} Python client threads, each opening a fresh TCP "
        "connection per request to 127.0.0.1, sending one request and reading to EOF "
        f"({CLIENT_TIMEOUT:.0f} s timeout); 1 s of load, then {LOAD_ROLLS} rolls, each waited "
        "for and followed by 0.5 s, then 0.5 s more. A failure is any connect/read error or a "
        "malformed reply. mcluster workers speak the echo fixture's one-line protocol, gunicorn "
        "HTTP/1.1, so the request rates are not comparable (the Python clients are the "
        "bottleneck on 2 cores anyway)."
    )
    out += failures_and_notes([(name, results.get(name, {})) for name in names], notes)
    for name in names:
        r = results.get(name)
        if not r:
            continue
        parts = []
        for size in START_SIZES:
            parts.append(f"start {size}: " + ", ".join(f"{s['ready'] * 1000:.1f}" for s in r.get(f"start{size}", [])))
        parts.append("roll new ready: " + ", ".join(f"{s['roll_new'] * 1000:.1f}" for s in r.get("roll", [])))
        parts.append("roll done: " + ", ".join(f"{s['roll_done'] * 1000:.1f}" for s in r.get("roll", [])))
        parts.append("RSS KiB: " + ", ".join(str(s["rss_kib"]) for s in r.get("roll", [])))
        out.append(f"- {name}: " + "; ".join(parts))
    out.append("")
    return "\n".join(out)


def failures_and_notes(systems: list, notes: list[str]) -> list[str]:
    """The report lines after a table: each system's load failures by kind, the notes, and the
    heading of the raw samples."""
    lines = []
    for label, result in systems:
        d = result.get("load")
        if d and d["errors"]:
            lines.append(f"- {label} failures by kind: " + ", ".join(f"{k}: {n}" for k, n in d["errors"].items()))
    for note in notes:
        lines.append(f"- {'' if note.startswith('load average') else 'Problem: '}{note}")
    lines.append("")
    lines.append("Raw samples (ms):\n")
    return lines


# --------------------------------------------------------------------------------------------
# axum section (its own table): "axum app, 10 rolls under load: failed requests" for plain
# `axum::serve` + `with_graceful_shutdown`, `mcluster::serve`, and gunicorn's sync worker on its
# WSGI app. examples/axum-app is built here (release, its own target directory); `axum-app
# --plain` is the same app on plain axum::serve. `python3 bench/run.py --axum-only` runs and
# prints this section alone, leaving results.md.
# --------------------------------------------------------------------------------------------

AXUM_ROLLS = 10
AXUM_SIZE = 2
AXUM_FRESH = 8  # client threads, a fresh connection per request
AXUM_KEEP_ALIVE = 2  # client threads on keep-alive connections (http.client, no retries)
AXUM_TARGET = ROOT / "target" / "bench-axum"
AXUM_APP = AXUM_TARGET / "release" / "axum-app"


def build_axum_app() -> None:
    cmd = ["cargo", "build", "--release", "--quiet", "--manifest-path", str(ROOT / "examples" / "axum-app" / "Cargo.toml")]
    print("bench: " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=900, env={**os.environ, "CARGO_TARGET_DIR": str(AXUM_TARGET)})
    if not AXUM_APP.exists():
        raise RuntimeError(f"{AXUM_APP} missing after the build")


class AxumUnderMcluster(Mcluster):
    """examples/axum-app under `mcluster start`, on mcluster::serve or (`plain`) axum::serve."""

    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.plain = plain
        self.name = "plain axum::serve" if plain else "mcluster::serve"

    def start(self, size: int) -> Server:
        argv = [
            str(MCLUSTER), "start", "-n", str(size), "--ready", "notify",
            "-l", "127.0.0.1:0", "--kill-timeout", "5s", "--ready-timeout", "20s",
            "--", str(AXUM_APP), *(["--plain"] if self.plain else []),
        ]  # fmt: skip
        server = Server(self.name, argv, env={**os.environ, "RUST_BACKTRACE": "0"})
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$")
        server.port = int(m.group(1))
        server.size = size
        return server

    def body_ok(self, body: bytes) -> bool:
        return body.startswith(b"Hello from worker")


class GunicornSync(Gunicorn):
    name = "gunicorn sync"

    def body_ok(self, body: bytes) -> bool:
        return body.startswith(b"pid=")


def axum_fresh_client(system, port: int, stop: threading.Event, stats: dict) -> None:
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        try:
            reply = exchange(port, request, CLIENT_TIMEOUT)
            head, _, body = reply.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 200") and system.body_ok(body):
                stats["ok"] += 1
            else:
                axum_fail(stats, "fresh: bad reply " + repr(reply[:40]))
        except OSError as e:
            axum_fail(stats, f"fresh: {type(e).__name__}")


def axum_keep_alive_client(system, port: int, stop: threading.Event, stats: dict) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    while not stop.is_set():
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200 and system.body_ok(body):
                stats["ok"] += 1
            else:
                axum_fail(stats, f"keep-alive: status {response.status}")
            if response.will_close:
                conn.close()  # the next request opens a new connection
        except (OSError, http.client.HTTPException) as e:
            axum_fail(stats, f"keep-alive: {type(e).__name__}")
            conn.close()
    conn.close()


def axum_fail(stats: dict, key: str) -> None:
    stats["fail"] += 1
    stats["errors"][key] = stats["errors"].get(key, 0) + 1


def measure_axum_rolls(system) -> dict:
    server = system.start(AXUM_SIZE)
    stop = threading.Event()
    clients = [axum_fresh_client] * AXUM_FRESH + [axum_keep_alive_client] * AXUM_KEEP_ALIVE
    per_thread = [{"ok": 0, "fail": 0, "errors": {}} for _ in clients]
    threads = []
    rolls = 0
    try:
        system.wait_ready(server)
        for target, stats in zip(clients, per_thread):
            th = threading.Thread(target=target, args=(system, server.port, stop, stats), daemon=True)
            th.start()
            threads.append(th)
        time.sleep(1.0)
        for _ in range(AXUM_ROLLS):
            system.roll(server)
            rolls += 1
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join(CLIENT_TIMEOUT + 2)
        server.stop()
    errors: dict[str, int] = {}
    for stats in per_thread:
        for key, n in stats["errors"].items():
            errors[key] = errors.get(key, 0) + n
    return {
        "ok": sum(s["ok"] for s in per_thread),
        "fail": sum(s["fail"] for s in per_thread),
        "errors": errors,
        "rolls": rolls,
    }


def axum_section() -> list[str]:
    """The axum section of results.md: builds the app, measures the three, returns the lines."""
    out = [f"\n## axum app, {AXUM_ROLLS} rolls under load: failed requests\n"]
    try:
        build_axum_app()
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        return out + [f"Not measured: examples/axum-app did not build ({e}).", ""]
    gunicorn_exe, gunicorn_version = install_gunicorn()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-axum-"))
    systems = [AxumUnderMcluster(plain=True), AxumUnderMcluster(plain=False)]
    if gunicorn_exe is not None:
        systems.append(GunicornSync(gunicorn_exe, gunicorn_version, workdir))
    results: dict[str, dict] = {}
    notes = []
    try:
        for system in systems:
            print(f"bench: {system.name}: {AXUM_ROLLS} rolls under load", file=sys.stderr, flush=True)
            try:
                results[system.name] = measure_axum_rolls(system)
            except Exception as e:
                notes.append(f"{system.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    names = ["plain axum::serve", "mcluster::serve", "gunicorn sync"]

    def cell(name: str) -> str:
        d = results.get(name)
        if d is None:
            return "not measured" + ("" if name != "gunicorn sync" or gunicorn_exe else f": gunicorn {gunicorn_version}")
        return f"**{d['fail']} failed** of {d['ok'] + d['fail']} ({d['rolls']}/{AXUM_ROLLS} rolls)"

    out.append("| Measurement | " + " | ".join(names) + " |")
    out.append("|---|---|---|---|")
    out.append(f"| axum app, {AXUM_ROLLS} rolls under load: failed requests | " + " | ".join(cell(n) for n in names) + " |")
    out.append("")
    out.append(
        f"{AXUM_SIZE} workers under `mcluster start --ready notify` (examples/axum-app, release build: "
        "`axum-app --plain` on `axum::serve(…).with_graceful_shutdown(SIGTERM)`, `axum-app` on "
        f"`mcluster::serve`), or `gunicorn -k sync -w {AXUM_SIZE}` on the trivial WSGI app above "
        f"(its own HUP). Load: {AXUM_FRESH} Python threads sending `GET /` on a fresh connection each, "
        f"and {AXUM_KEEP_ALIVE} on keep-alive connections (`http.client`; a new connection only after "
        "`Connection: close`; no retries). 1 s of load, then each roll waited for (new workers ready, "
        "old ones exited) and followed by 0.3 s. A failure is any error or any answer but a 200 from the app."
    )
    for name in names:
        d = results.get(name)
        if d and d["errors"]:
            out.append(f"- {name} failures by kind: " + ", ".join(f"{k}: {n}" for k, n in d["errors"].items()))
    for note in notes:
        out.append(f"- Problem: {note}")
    out.append("")
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all()

#!/usr/bin/env python3
"""mcluster benchmark, side by side with gunicorn (a pre-fork arbiter) in the same run.

One command, from anywhere:  python3 bench/run.py
Writes bench/results.md (and prints it). Python 3.11 standard library only; gunicorn is
installed into target/bench-venv by this script when missing. See bench/README.md.

Everything binds 127.0.0.1 only. Every server is started in its own session and killed on exit
(SIGTERM, then SIGKILL to every process of that session), whatever happens.
"""

from __future__ import annotations

import atexit
import datetime
import os
import platform
import re
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


def session_members(sid: int) -> list[int]:
    """Pids of every process whose session id is `sid` (a session we created)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is the state, [1] ppid, [2] pgrp, [3] session
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


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
    """A master process, its stderr read line by line (with arrival times) on a thread."""

    def __init__(self, name: str, argv: list[str], cwd: Path | None = None):
        self.name = name
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.t_launch = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        LIVE.append(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
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
            members = session_members(self.pid)
            if self.proc.poll() is None:
                members.append(self.pid)
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
        if self.proc.stderr:
            self.reader.join(2)
            self.proc.stderr.close()
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
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+)$")
        server.port = int(m.group(1))
        server.size = size
        return server

    def wait_ready(self, server: Server) -> float:
        """Launch → arrival of `all N workers ready`. Also keeps mcluster's own figure."""
        _, t, m = server.wait_line(rf"^mcluster: all {server.size} workers ready in (\S+)$")
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
        for attempt in range(3):
            port = free_port()
            argv = [
                str(self.exe), "-c", str(self.workdir / "benchconf.py"),
                "--chdir", str(self.workdir), "-k", "sync", "-w", str(size),
                "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "--timeout", "30",
                "--log-level", "info", "benchapp:app",
            ]  # fmt: skip
            server = Server("gunicorn", argv)
            server.port = port
            server.size = size
            try:
                server.wait_line(r"Listening at: http://127\.0\.0\.1:\d+")
                return server
            except (RuntimeError, TimeoutError):
                server.kill()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

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


def client(system, port: int, stop: threading.Event, stats: dict) -> None:
    request = system.request()
    pid_re = re.compile(rb"pid=(\d+)")
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as s:
                s.sendall(request)
                chunks = []
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    chunks.append(chunk)
            reply = b"".join(chunks)
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
    for path in (MCLUSTER, ECHO):
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
    text = report(systems, results, gunicorn_version if gunicorn_exe else None,
                  gunicorn_version, notes, time.monotonic() - t_all)  # fmt: skip
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
        "- *Roll*: the two HUPs differ. mcluster replaces workers one at a time and stops an old "
        "worker only once its replacement sent READY=1; *all new ready* is its `rolled` line. "
        "gunicorn reloads its config and app, forks all N new workers at once and SIGTERMs the N "
        "old ones right away without waiting for the new ones to boot (capacity can briefly dip; "
        "connections wait in the shared listen queue); *all new ready* is the Nth new "
        "`post_worker_init` line. *Old exited* is seen by polling /proc every 2 ms (a zombie "
        "counts as exited), for both. The echo fixture is ready about 1 ms after exec, which flatters "
        "a one-at-a-time roll: with an app that takes T to boot, mcluster's roll takes about N × T, "
        "gunicorn's about T."
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
    for name in names:
        d = results.get(name, {}).get("load")
        if d and d["errors"]:
            out.append(f"- {name} failures by kind: " + ", ".join(f"{k}: {n}" for k, n in d["errors"].items()))
    for note in notes:
        out.append(f"- {'' if note.startswith('load average') else 'Problem: '}{note}")
    out.append("")
    out.append("Raw samples (ms):\n")
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all()

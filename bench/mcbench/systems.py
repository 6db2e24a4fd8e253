"""The two systems under test in the first section (and the bases of the roll and axum
sections' systems). Each start() returns a Server whose readiness can be awaited, and tracks which
worker pids are current."""

from __future__ import annotations

import os
import re
import signal
import time

from .baseline import Baseline
from .build import git_describe
from .config import ECHO, MCLUSTER, WAIT
from .procs import Server, start_on_free_port, wait_exited


def ready_line(size: int) -> str:
    """mcluster's line once the first generation is ready; group 1 is its own figure."""
    what = "the worker is" if size == 1 else f"all {size} workers"
    return rf"^mcluster: {what} ready in (\S+)$"


class Mcluster:
    """The current build, or (`baseline`) the `mcluster` binary of another revision, under the
    name of its column."""

    def __init__(self, baseline: Baseline | None = None) -> None:
        self.baseline = baseline
        self.name = baseline.label if baseline else "mcluster"
        self.exe = baseline.mcluster if baseline else MCLUSTER
        self.version = baseline.describe if baseline else git_describe()

    def start(self, size: int) -> Server:
        argv = [
            str(self.exe), "start", "-n", str(size), "--ready", "notify",
            "-l", "127.0.0.1:0", "--kill-timeout", "5s", "--ready-timeout", "20s",
            "--", str(ECHO),
        ]  # fmt: skip
        server = Server(self.name, argv)
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

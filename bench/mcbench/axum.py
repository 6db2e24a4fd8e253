"""axum section (its own table): "10 rolls under load: failed requests" for apps that do nothing
special on SIGTERM, beside ones that drain: examples/axum-app on `mcluster::serve` and on plain
`axum::serve` + `with_graceful_shutdown` (`axum-app --plain`), the latter with steering (the
default: a listening socket per generation, new connections steered to the newest) and with
`--no-steering` (every generation on one shared socket, as before issue 19); the naive Python
worker (fixtures/workers/naive_http.py: `http.server` on fd 3, no SIGTERM handler) the same two
ways; and gunicorn's sync worker on its WSGI app. examples/axum-app is built here (release, its
own target directory). `python3 bench/run.py --axum-only` runs and prints this section alone,
leaving results.md."""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .build import install_gunicorn
from .config import CLIENT_TIMEOUT, MCLUSTER, ROOT
from .probe import exchange
from .procs import Server, kill_all
from .report import loadavg, ms
from .systems import Gunicorn, Mcluster


AXUM_ROLLS = 10
AXUM_SIZE = 2
AXUM_FRESH = 8  # client threads, a fresh connection per request
AXUM_KEEP_ALIVE = 2  # client threads on keep-alive connections (one retry, as HTTP clients do)
AXUM_TARGET = ROOT / "target" / "bench-axum"
AXUM_APP = AXUM_TARGET / "release" / "axum-app"
NAIVE_WORKER = ROOT / "fixtures" / "workers" / "naive_http.py"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # keep-alive (HTTP/1.1's default)
FRESH_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
# The master's lines that say a generation did not get (or keep) its own socket: quoted in the notes.
STEERING_LINES = r"^mcluster: (cannot open listening sockets|cannot send new connections|every generation shares)"
# The master's line when an old worker reached its drain deadline (--kill-timeout) still busy.
NOT_DRAINED = r"still had requests in progress .* after the switch; sending the stop signal$"


def build_axum_app() -> None:
    cmd = ["cargo", "build", "--release", "--quiet", "--manifest-path", str(ROOT / "examples" / "axum-app" / "Cargo.toml")]
    print("bench: " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=900, env={**os.environ, "CARGO_TARGET_DIR": str(AXUM_TARGET)})
    if not AXUM_APP.exists():
        raise RuntimeError(f"{AXUM_APP} missing after the build")


class WorkerUnderMcluster(Mcluster):
    """A worker command under `mcluster start -n AXUM_SIZE`, steered (the default) or with
    `--no-steering`."""

    ready = "notify"

    def __init__(self, name: str, steering: bool) -> None:
        super().__init__()
        self.steering = steering
        self.name = name if steering else f"{name} --no-steering"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, size: int) -> Server:
        argv = [
            str(MCLUSTER), "start", "-n", str(size), "--ready", self.ready,
            "-l", "127.0.0.1:0", "--kill-timeout", "5s", "--ready-timeout", "20s",
            *([] if self.steering else ["--no-steering"]), "--", *self.command(),
        ]  # fmt: skip
        server = Server(self.name, argv, env={**os.environ, "RUST_BACKTRACE": "0"})
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$")
        server.port = int(m.group(1))
        server.size = size
        return server

    def master_notes(self, server: Server) -> list[str]:
        """The master's lines about shared sockets, steering that failed, and old workers
        stopped at their drain deadline, verbatim."""
        with server.cond:
            return [text for _, text in server.lines if re.match(STEERING_LINES, text) or re.search(NOT_DRAINED, text)]


class AxumUnderMcluster(WorkerUnderMcluster):
    """examples/axum-app on mcluster::serve or (`plain`) axum::serve."""

    def __init__(self, plain: bool, steering: bool = True) -> None:
        super().__init__("plain axum::serve" if plain else "mcluster::serve", steering)
        self.plain = plain

    def command(self) -> list[str]:
        return [str(AXUM_APP), *(["--plain"] if self.plain else [])]

    def body_ok(self, body: bytes) -> bool:
        return body.startswith(b"Hello from worker")


class NaivePython(WorkerUnderMcluster):
    """fixtures/workers/naive_http.py: no READY=1 (`--ready auto`), no SIGTERM handler."""

    ready = "auto"

    def __init__(self, steering: bool) -> None:
        super().__init__("naive Python http.server", steering)

    def command(self) -> list[str]:
        return ["python3", str(NAIVE_WORKER)]

    def body_ok(self, body: bytes) -> bool:
        return body.startswith(b"generation ")


class GunicornSync(Gunicorn):
    name = "gunicorn sync"

    def body_ok(self, body: bytes) -> bool:
        return body.startswith(b"pid=")

    def master_notes(self, server: Server) -> list[str]:
        return []


class Unanswered(ConnectionError):
    """The connection failed before any byte of the answer arrived (reset, broken pipe, or EOF
    before the status line): the case in which HTTP clients retry an idempotent request sent on
    a reused connection."""


def keep_alive_exchange(sock: socket.socket) -> tuple[bytes, bytes, bool]:
    """Sends REQUEST on `sock`, reads one answer (its head, its Content-Length body): (head, body,
    whether the server closes the connection after it). Unanswered if not one byte of it came."""
    try:
        sock.sendall(REQUEST)
    except (ConnectionResetError, BrokenPipeError) as e:
        raise Unanswered(f"{type(e).__name__} sending the request") from e
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError as e:
            if not data:
                raise Unanswered("ConnectionResetError before the status line") from e
            raise
        if not chunk:
            if not data:
                raise Unanswered("EOF before the status line")
            raise ConnectionError(f"EOF in the answer's head after {len(data)} bytes")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    length = int(fields.get(b"content-length", b"0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"EOF in the body after {len(body)} of {length} bytes")
        body += chunk
    closes = fields.get(b"connection") == b"close" or head.startswith(b"HTTP/1.0")
    return head, body, closes


def axum_fresh_client(system, port: int, stop: threading.Event, stats: dict) -> None:
    while not stop.is_set():
        try:
            reply = exchange(port, FRESH_REQUEST, CLIENT_TIMEOUT)
            head, _, body = reply.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 200") and system.body_ok(body):
                stats["ok"] += 1
            else:
                axum_fail(stats, "fresh", f"bad reply {reply[:40]!r}")
        except OSError as e:
            axum_fail(stats, "fresh", f"{type(e).__name__}: {e}")


def axum_keep_alive_client(system, port: int, stop: threading.Event, stats: dict) -> None:
    """Requests on one connection while the server keeps it open; a request sent on a reused
    connection and left without a byte of answer is sent once more on a new one."""
    sock = None
    reused = False
    try:
        while not stop.is_set():
            retrying = False
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
                    reused = False
                try:
                    head, body, closes = keep_alive_exchange(sock)
                except Unanswered as e:
                    sock.close()
                    sock = None
                    if not reused:
                        raise Unanswered(f"{e} on a new connection") from e
                    retrying = True
                    stats["retried"] += 1
                    stats["retry_kinds"][str(e)] = stats["retry_kinds"].get(str(e), 0) + 1
                    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
                    head, body, closes = keep_alive_exchange(sock)  # no second retry
                reused = True
                if head.startswith(b"HTTP/1.1 200") and system.body_ok(body):
                    stats["ok"] += 1
                else:
                    axum_fail(stats, "keep-alive", f"bad reply {head[:40]!r}")
                if closes:
                    sock.close()
                    sock = None
            except OSError as e:
                text = str(e) if isinstance(e, Unanswered) else f"{type(e).__name__}: {e}"
                axum_fail(stats, "keep-alive", text + (" (the retry)" if retrying else ""))
                if sock is not None:
                    sock.close()
                    sock = None
    finally:
        if sock is not None:
            sock.close()


def axum_fail(stats: dict, kind: str, text: str) -> None:
    stats["fail"][kind] += 1
    key = f"{kind}: {re.sub(r'[0-9]+ bytes', 'N bytes', text)}"
    stats["errors"][key] = stats["errors"].get(key, 0) + 1
    if stats["first"].get(kind) is None:
        stats["first"][kind] = (time.monotonic(), text)


def measure_axum_rolls(system) -> dict:
    server = system.start(AXUM_SIZE)
    stop = threading.Event()
    clients = [axum_fresh_client] * AXUM_FRESH + [axum_keep_alive_client] * AXUM_KEEP_ALIVE
    per_thread = [
        {"ok": 0, "fail": {"fresh": 0, "keep-alive": 0}, "errors": {}, "first": {}, "retried": 0, "retry_kinds": {}}
        for _ in clients
    ]
    threads = []
    rolls = []
    notes = []
    try:
        system.wait_ready(server)
        for target, stats in zip(clients, per_thread):
            th = threading.Thread(target=target, args=(system, server.port, stop, stats), daemon=True)
            th.start()
            threads.append(th)
        time.sleep(1.0)
        for _ in range(AXUM_ROLLS):
            rolls.append(system.roll(server))
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join(CLIENT_TIMEOUT * 2 + 2)
        notes = system.master_notes(server)
        server.stop()
    errors: dict[str, int] = {}
    retry_kinds: dict[str, int] = {}
    first: dict[str, tuple[float, str]] = {}
    for stats in per_thread:
        for key, n in stats["errors"].items():
            errors[key] = errors.get(key, 0) + n
        for key, n in stats["retry_kinds"].items():
            retry_kinds[key] = retry_kinds.get(key, 0) + n
        for kind, seen in stats["first"].items():
            if kind not in first or seen[0] < first[kind][0]:
                first[kind] = seen
    return {
        "ok": sum(s["ok"] for s in per_thread),
        "fresh": sum(s["fail"]["fresh"] for s in per_thread),
        "keep-alive": sum(s["fail"]["keep-alive"] for s in per_thread),
        "retried": sum(s["retried"] for s in per_thread),
        "errors": errors,
        "retry_kinds": retry_kinds,
        "first": {kind: text for kind, (_, text) in first.items()},
        "rolls": rolls,
        "notes": notes,
    }


def roll_cell(rolls: list[tuple[float, float]]) -> str:
    if not rolls:
        return "—"
    rolled = [r for r, _ in rolls]
    gone = [g for _, g in rolls]
    return (
        f"{ms(statistics.median(rolled))} / **{ms(statistics.median(gone))}** "
        f"({ms(min(gone))} – {ms(max(gone))})"
    )


def axum_section() -> list[str]:
    """The axum section of results.md: builds the app, measures each system, returns the lines."""
    out = [f"\n## axum app and a naive worker, {AXUM_ROLLS} rolls under load: failed requests\n"]
    load_start = loadavg()
    t0 = time.monotonic()
    try:
        build_axum_app()
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        return out + [f"Not measured: examples/axum-app did not build ({e}).", ""]
    gunicorn_exe, gunicorn_version = install_gunicorn()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-axum-"))
    systems = [
        AxumUnderMcluster(plain=False),
        AxumUnderMcluster(plain=True),
        AxumUnderMcluster(plain=True, steering=False),
        NaivePython(steering=True),
        NaivePython(steering=False),
    ]
    if gunicorn_exe is not None:
        systems.append(GunicornSync(gunicorn_exe, gunicorn_version, workdir))
    names = [s.name for s in systems] + ([] if gunicorn_exe is not None else ["gunicorn sync"])
    results: dict[str, dict] = {}
    problems = []
    try:
        for system in systems:
            print(f"bench: {system.name}: {AXUM_ROLLS} rolls under load", file=sys.stderr, flush=True)
            try:
                results[system.name] = measure_axum_rolls(system)
            except Exception as e:
                problems.append(f"{system.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            finally:
                kill_all()
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = loadavg()

    out.append(
        "| System | Answered | **Failed**: fresh / keep-alive | Retried (keep-alive) | Roll, median: SIGHUP → `rolled` / → **old workers exited** (min – max) | First failure (fresh; keep-alive) |"
    )
    out.append("|---|---|---|---|---|---|")
    for name in names:
        d = results.get(name)
        if d is None:
            why = f": gunicorn {gunicorn_version}" if name == "gunicorn sync" and gunicorn_exe is None else ""
            out.append(f"| {name} | not measured{why} | | | | |")
            continue
        failed = d["fresh"] + d["keep-alive"]
        first = "; ".join(f"{kind}: `{text}`" for kind, text in sorted(d["first"].items())) or "—"
        out.append(
            f"| {name} | {d['ok']} ({len(d['rolls'])}/{AXUM_ROLLS} rolls) | **{failed} failed**: {d['fresh']} / {d['keep-alive']} "
            f"| {d['retried']} | {roll_cell(d['rolls'])} | {first} |"
        )
    out.append("")
    out.append(
        f"{AXUM_SIZE} workers under `mcluster start -l 127.0.0.1:0 --kill-timeout 5s` (mcluster {systems[0].version}): "
        "examples/axum-app, release build, `--ready notify` (`axum-app` on `mcluster::serve`; `axum-app --plain` on "
        "`axum::serve(…).with_graceful_shutdown(SIGTERM)`, as axum documents it), or `python3 fixtures/workers/naive_http.py` "
        "with `--ready auto` (`http.server` on fd 3, no SIGTERM handler: the signal ends it at once with whatever it "
        "accepted; every answer closes its connection). Rows without `--no-steering` run with steering, the default: "
        "a listening socket per generation in one `SO_REUSEPORT` group, new connections steered to the newest, old "
        "workers stopped once drained. `--no-steering`: every generation on one shared socket, the behaviour before "
        f"issue 19. gunicorn: `gunicorn -k sync -w {AXUM_SIZE}` on the trivial WSGI app of the first section (its own HUP)."
    )
    out.append("")
    out.append(
        f"- Load, the same for every row: {AXUM_FRESH} Python threads sending `GET /` on a fresh connection each "
        f"(`Connection: close`, read to EOF), and {AXUM_KEEP_ALIVE} on keep-alive connections (HTTP/1.1, the answer read "
        "by its Content-Length; a new connection once the server answers `Connection: close`). 1 s of load, then each "
        "roll (SIGHUP) waited for (new workers ready, old ones exited) and followed by 0.3 s; 0.5 s after the last."
    )
    out.append(
        "- Retried: a keep-alive client sends a request once more, on a new connection, when the request went out on a "
        "*reused* connection (one that had carried an answer) and the server closed it before any byte of the answer "
        "(a reset, a broken pipe, or EOF before the status line), as hyper's client and browsers do for idempotent "
        "requests: the server may close an idle kept-alive connection at any time, and the request crossed that close. "
        "A retry that fails, a failure on a new connection, or one after a byte of the answer is failed. Fresh "
        "connections are never retried."
    )
    out.append("- Failed: any error, or any answer but a 200 from the app. First failure: its text as the client saw it.")
    out.append(
        "- Roll: `rolled` is the master's line; old workers exited is when the last old pid was gone. With steering an "
        "old worker gets its stop signal once drained (its socket's queue empty, none of its connections with a "
        "request in progress) or at its drain deadline, `--kill-timeout` after the switch (5 s here)."
    )
    for name in names:
        d = results.get(name)
        if d and d["errors"]:
            out.append(f"- {name} failures by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(d["errors"].items())))
        if d and d["retry_kinds"]:
            out.append(f"- {name} retries by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(d["retry_kinds"].items())))
        if d and d["rolls"]:
            out.append(f"- {name} rolls, SIGHUP → old workers exited (ms): " + ", ".join(f"{g * 1000:.0f}" for _, g in d["rolls"]))
        if d and d["notes"]:
            shared = sorted({t for t in d["notes"] if not re.search(NOT_DRAINED, t)})
            late = [t for t in d["notes"] if re.search(NOT_DRAINED, t)]
            if shared:
                out.append(f"- {name}, the master said: " + "; ".join(f"`{t}`" for t in shared))
            if late:
                out.append(
                    f"- {name}: {len(late)} old workers got the stop signal at their drain deadline (`--kill-timeout 5s`) "
                    f"with requests still in progress; the first such line: `{late[0]}`"
                )
    for note in problems:
        out.append(f"- Problem: {note}")
    out.append(
        f"- section time: {time.monotonic() - t0:.0f} s; load average (1/5/15 min) at the start of this section: "
        f"{load_start}; at the end: {load_end}"
    )
    out.append("")
    return out

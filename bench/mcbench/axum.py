"""axum section (its own table): "axum app, 10 rolls under load: failed requests" for plain
`axum::serve` + `with_graceful_shutdown`, `mcluster::serve`, and gunicorn's sync worker on its
WSGI app. examples/axum-app is built here (release, its own target directory); `axum-app
--plain` is the same app on plain axum::serve. `python3 bench/run.py --axum-only` runs and
prints this section alone, leaving results.md."""

from __future__ import annotations

import os
import shutil
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
from .systems import Gunicorn, Mcluster


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

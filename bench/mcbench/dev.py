"""Dev mode: `mcluster dev` and the anchor, `systemfd --no-pid -- cargo watch -x run`, on copies
of examples/hello-app. An edit is a new string literal in the answer (`Hello #N from worker`)."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import baseline
from .baseline import Baseline
from .build import git_describe, install_dev_tools
from .config import CLIENTS, DEV_CLIENT_TIMEOUT, DEV_WAIT, MCLUSTER, ROOT, TOOLS
from .probe import http_get, wait_systemfd_serving
from .procs import Server, kill_all, start_on_free_port
from .report import failures_and_notes, loadavg, ms, summary
from .stats import Budget, parse_human, percentile


HELLO = ROOT / "examples" / "hello-app"
DEV_SIZE = 2  # mcluster dev workers
DEV_EDITS = 5  # edits per measurement
DEV_POLL = 0.010  # between two GETs while waiting for the new text

DEV_SETTLE = 1.0  # quiet time before each edit (and of load after each reload)

DEV_BUDGET = 480.0  # seconds for the dev section after the tools are installed
DEV_BASELINE_BUDGET = 120.0  # more seconds when a baseline (`--baseline REV`) is measured too
ANCHOR_BACKLOG = 4096  # the anchor's second run under load: mcluster's listen backlog (SOMAXCONN)
MARK = re.compile(rb"Hello #(\d+) from worker")

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
    """The current build, or (`baseline`) the `mcluster` binary of another revision."""

    def __init__(self, project: Project, workdir: Path, baseline: Baseline | None = None) -> None:
        self.name = baseline.label if baseline else "mcluster"
        self.project = project
        self.workdir = workdir
        self.argv = [
            str(baseline.mcluster if baseline else MCLUSTER), "dev", "-n", str(DEV_SIZE), "-l", "127.0.0.1:0", "--kill-timeout", "5s",
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


def run_dev_section(workdir: Path, notes: list[str], out: dict) -> None:
    """Everything of the dev section, into `out` (partial if it raises)."""
    out.update({"mcluster": {}, "anchor": {}, "anchor_backlog": {}})
    if baseline.current is not None:
        out["mcluster_rev"] = {}
        out["baseline"] = (baseline.current.label, baseline.current.describe)
    versions, why = install_dev_tools()
    out["tools"], out["tools_why"] = versions, why
    if versions is None:
        print(f"bench: systemfd/cargo-watch {why}; measuring mcluster dev alone", file=sys.stderr, flush=True)
    budget = Budget(DEV_BUDGET + (DEV_BASELINE_BUDGET if baseline.current else 0))
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
    if baseline.current is not None:
        # The same copy, run after the current build's: only the master differs.
        systems["mcluster_rev"] = DevMcluster(projects["mcluster"], workdir, baseline.current)
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

    if "mcluster_rev" in systems:
        out["mcluster_rev"]["baseline"] = out["mcluster"]["baseline"]  # the same copy's builds

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
                if isinstance(system, DevMcluster):
                    # mcluster dev keeps a link to each build in <target>/debug/.mcluster-PID/
                    # and removes that directory when it exits.
                    left = sorted(str(d.relative_to(workdir)) for d in system.project.target.glob("*/.mcluster-*"))
                    if left:
                        notes.append(f"mcluster dev left {', '.join(left)} behind after SIGTERM")


def dev_report(dev: dict, notes: list[str]) -> list[str]:
    """The dev-mode section of results.md."""
    tools = dev.get("tools")
    base = dev.get("baseline")  # (column, description) with `--baseline REV`
    names = ["mcluster", *(["mcluster_rev"] if base else []), "anchor"]

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
        + (f" **{base[0]}**: the same on mcluster's copy, after it, with the `mcluster` binary of {base[1]} (`--baseline`)." if base else "")
        + f" Timings: median (min – max) of {DEV_EDITS} edits."
    )
    lines.append("")
    lines.append("| Measurement | mcluster dev | " + (f"{base[0]} dev | " if base else "") + "systemfd + cargo watch |")
    lines.append("|---" * (len(names) + 1) + "|")
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cell(name, fn) for name in names) + " |")
    same = "— (its listen queue is 4096 already)"
    for label, fn in (
        (f"Under load again, anchor with `systemfd --backlog {ANCHOR_BACKLOG}`", load),
        ("↳ request latency, whole run", latency),
        ("↳ requests ≥ 100 ms that started during a reload / at other times", slow_split),
        ("↳ edit → first answer with the new text, under load", load_served),
    ):
        lines.append(f"| {label} | {same} | " + (f"{same} | " if base else "") + f"{cell('anchor_backlog', fn)} |")
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
        "once (`--surge all`); once every replacement is ready (`READY=1`), new connections go to them "
        "(steering) and each old worker gets its stop signal once drained; the first new worker answers before the `rolled` line. cargo-watch stops the app first (SIGTERM to its process group, and waits), "
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
    labels = {"mcluster": "mcluster", **({"mcluster_rev": base[0]} if base else {}), "anchor": "anchor", "anchor_backlog": f"anchor --backlog {ANCHOR_BACKLOG}"}
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

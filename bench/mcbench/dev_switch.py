"""Dev switch (issue 8 row a): `mcluster dev -n 8` against systemfd + cargo-watch and systemfd +
watchexec, on bench/apps/slow-axum (axum, 0.3 s of start-up, no READY=1). A client loop
records every answer's text and time; an edit's "first new" and "last old" answers come
from it."""

from __future__ import annotations

import math
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
from .config import BENCH, DEV_CLIENT_TIMEOUT, DEV_WAIT, MCLUSTER, ROOT, TOOLS
from .probe import http_get, wait_systemfd_serving
from .procs import CpuSampler, Server, kill_all, start_on_free_port
from .report import loadavg, ms, pct, summary
from .stats import Budget, cpu_share, parse_human


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
DS_BASELINE_BUDGET = 60.0  # more seconds when a baseline (`--baseline REV`) is measured too
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
    """The current build, or (`baseline`) the `mcluster` binary of another revision."""

    def __init__(self, app: SlowAxum, workdir: Path, baseline: Baseline | None = None) -> None:
        self.app = app
        self.workdir = workdir
        self.key = "mcluster_rev" if baseline else "mcluster"
        self.label = f"{baseline.label} dev -n 8" if baseline else "mcluster dev -n 8"
        self.exe = baseline.mcluster if baseline else MCLUSTER

    def command(self) -> str:
        return f"CARGO_TARGET_DIR=… mcluster dev -n {DS_SIZE} -l 127.0.0.1:0 --manifest-path <copy>/Cargo.toml"

    def start(self) -> Server:
        argv = [str(self.exe), "dev", "-n", str(DS_SIZE), "-l", "127.0.0.1:0", "--manifest-path", str(self.app.dir / "Cargo.toml")]
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
    if baseline.current is not None:
        systems.append(DsMcluster(app, workdir, baseline.current))
        out["baseline"] = (systems[-1].label, baseline.current.describe)
    if versions is not None:
        systems.append(DsAnchor("cargo-watch", app, workdir))
    if wversions is not None:
        systems.append(DsAnchor("watchexec", app, workdir))
    out["systems"] = {s.key: (s.label, s.command()) for s in systems}
    budget = Budget(DS_BUDGET + (DS_BASELINE_BUDGET if baseline.current else 0))
    for system in systems:
        if budget.left() < 30:
            notes.append(f"{system.label}: skipped (time budget)")
            continue
        server = sampler = None
        try:
            print(f"bench: dev switch: {system.command()}", file=sys.stderr, flush=True)
            server = system.start()
            sampler = CpuSampler(server.pid) if isinstance(system, DsMcluster) else None
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
    base = ds.get("baseline")  # (column, description) with `--baseline REV`
    keys = ["mcluster", *(["mcluster_rev"] if base else []), "cargo-watch", "watchexec"]
    labels = {"mcluster": "mcluster dev -n 8", "cargo-watch": "systemfd + cargo watch", "watchexec": "systemfd + watchexec"}
    if base:
        labels["mcluster_rev"] = base[0]

    def cell(key: str, fn) -> str:
        if key in ("cargo-watch", "watchexec") and not ds.get(key):
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
        + (f"**{base[0]}**: the same, with the `mcluster` binary of {base[1]} (`--baseline`). " if base else "")
        + "".join(
            f"**{labels[k]}** ({', '.join(f'{t} {tools[t]}' for t in ('systemfd', k) if t in tools)}): `{ds['systems'][k][1]}`. "
            for k in ("cargo-watch", "watchexec") if k in ds.get("systems", {})
        )
        + f"Timings: median (min – max) of {DS_EDITS} edits per system, each under a client loop ({DS_CLIENTS} threads, "
        f"fresh connection per `GET /`, {DS_PAUSE * 1000:.0f} ms pause)."
    )
    lines.append("")
    lines.append("| Measurement | " + " | ".join(labels[k] for k in keys) + " |")
    lines.append("|---" * (len(keys) + 1) + "|")
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
        "the old workers serve, then starts all 8 replacements at once; once every one is seen accepting, new connections go "
        "to them (steering) and each old worker gets its stop signal once drained. systemfd runs with `--backlog 4096` (mcluster's listen queue); its default, 1, would add "
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

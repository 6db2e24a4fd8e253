"""The first section: `mcluster start` against gunicorn (launch → all ready, master RSS, a
roll, requests during rolls under load)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import baseline
from .build import git_describe, install_gunicorn
from .config import CLIENTS, CLIENT_TIMEOUT, REPS
from .probe import exchange
from .procs import cpu_ns, kill_all, threads, vm_rss_kib
from .report import failures_and_notes, loadavg, mib, plural, summary
from .stats import Budget
from .systems import Gunicorn, Mcluster


START_SIZES = (1, 16)
ROLL_SIZE = 4

LOAD_ROLLS = 5
BUDGET = 270.0  # seconds for the measurements (the build and pip install come before)
BASELINE_BUDGET = 135.0  # more seconds when a baseline (`--baseline REV`) is measured too
IDLE = 1.0  # seconds over which the master's idle CPU is read, its workers ready and unloaded


def pct2(x: float) -> str:
    """A share of a core to 0.01 %: an idle master's is well under 1 %."""
    return f"{x * 100:.2f} %"


def measure_startup(system, size: int) -> dict:
    server = system.start(size)
    try:
        out = {"ready": system.wait_ready(server), "threads": threads(server.pid)}
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
        n_threads = threads(server.pid)
        c0, t0 = cpu_ns(server.pid), time.monotonic()
        time.sleep(IDLE)
        c1, t1 = cpu_ns(server.pid), time.monotonic()
        idle = (c1 - c0) / 1e9 / (t1 - t0) if c0 is not None and c1 is not None else None
        new_ready, all_done = system.roll(server)
        return {"rss_kib": rss, "threads": n_threads, "idle_cpu": idle, "roll_new": new_ready, "roll_done": all_done}
    finally:
        server.stop()


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


def measure_start(load_start: str) -> tuple[dict, list[str]]:
    """The first section: launch, RSS and roll, requests under rolls, for mcluster and
    gunicorn; (what start_report needs, notes). `load_start`: the load average when the run
    began."""
    notes: list[str] = []
    gunicorn_exe, gunicorn_version = install_gunicorn()

    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-"))
    systems = [Mcluster()]
    if baseline.current is not None:
        systems.append(Mcluster(baseline.current))
    if gunicorn_exe is not None:
        systems.append(Gunicorn(gunicorn_exe, gunicorn_version, workdir))
    budget = Budget(BUDGET + (BASELINE_BUDGET if baseline.current else 0))
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

    state = {
        "systems": systems,
        "results": results,
        "gunicorn_ok": gunicorn_version if gunicorn_exe else None,
        "gunicorn_why": gunicorn_version,
    }
    return state, notes


def start_report(state: dict, notes: list[str], elapsed: float) -> str:
    return report(state["systems"], state["results"], state["gunicorn_ok"], state["gunicorn_why"], notes, elapsed)


def report(systems, results, gunicorn_ok, gunicorn_why, notes, elapsed) -> str:
    base = next((s for s in systems if getattr(s, "baseline", None)), None)  # `--baseline REV`
    names = ["mcluster", *([base.name] if base else []), "gunicorn"]

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

    def threads_of(r):
        per_size = [
            statistics.median(s["threads"] for s in samples)
            for samples in (r["start1"], r["roll"], r["start16"])
        ]
        return " / ".join(f"{n:g}" for n in per_size)

    def idle(r):
        return summary([s["idle_cpu"] for s in r["roll"] if s["idle_cpu"] is not None], pct2)

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
        (f"Master threads, 1 / {ROLL_SIZE} / 16 workers ready", threads_of),
        (f"Master CPU while idle, {ROLL_SIZE} workers ready (share of a core over {IDLE:g} s)", idle),
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
        + (f" {base.name}: the `mcluster` binary of {base.version}, built by `--baseline`, the same "
           "workers." if base else "")  # fmt: skip
        + f" Timings: median (min – max) of {REPS} runs.\n"
    )
    out.append("| Measurement | " + " | ".join(names) + " |")
    out.append("|---" * (len(names) + 1) + "|")
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(cell(name, fn) for name in names) + " |")
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
        "its default); once every replacement sent READY=1, new connections go to them (steering) and "
        "each old worker gets its stop signal once drained; *all new ready* is its `rolled` line. "
        "gunicorn reloads its config and app, forks all N new workers at once and SIGTERMs the N "
        "old ones right away without waiting for the new ones to boot (capacity can briefly dip; "
        "connections wait in the shared listen queue); *all new ready* is the Nth new "
        "`post_worker_init` line. *Old exited* is seen by polling /proc every 2 ms (a zombie "
        "counts as exited), for both. The echo fixture is ready about 1 ms after exec; the roll of "
        "workers that take 1 s to boot is its own section below."
    )
    out.append(
        "- *Master RSS* is VmRSS of the master process only (mcluster; gunicorn's arbiter), "
        "read 0.5 s after all workers are ready. *Master threads*: `Threads` of its "
        "/proc/PID/status once all workers are ready (medians). *Master CPU while idle*: its CPU "
        f"time (`/proc/PID/task/*/schedstat`) over the {IDLE:g} s after the RSS is read, the "
        "workers ready and no request sent."
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
        parts.append("idle CPU: " + ", ".join(pct2(s["idle_cpu"]) for s in r.get("roll", []) if s.get("idle_cpu") is not None))
        out.append(f"- {name}: " + "; ".join(parts))
    out.append("")
    return "\n".join(out)

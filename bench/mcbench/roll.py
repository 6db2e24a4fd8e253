"""Roll (issue 8 row b): `mcluster start -n 8` against gunicorn -w 8, workers that boot for 1 s
and send no READY=1; SIGHUP → all new ready, all old exited; requests under load."""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import baseline
from .build import git_describe, install_gunicorn
from .config import BENCH, CLIENT_TIMEOUT, WAIT
from .probe import exchange
from .procs import CpuSampler, Server, kill_all, wait_exited
from .report import loadavg, ms, pct, summary
from .stats import Budget, cpu_share, percentile
from .systems import Gunicorn, Mcluster


BOOT_WORKER = BENCH / "apps" / "boot_worker.py"
RB_HEADING = "## Roll: `mcluster start -n 8`, workers with 1 s of boot, no `READY=1`"
RB_SIZE = 8
RB_BOOT = 1.0
RB_ROLLS = 5  # idle, then as many under load
RB_CLIENTS = 4
RB_GAP = 1.0  # between two rolls (of load, under load)
RB_BUDGET = 150.0
RB_BASELINE_BUDGET = 60.0  # more seconds when a baseline (`--baseline REV`) is measured too
# The master's pacing of its probes of starting workers (`PROBE_INTERVAL`, `PROBE_INTERVAL_MAX`
# in src/cluster.rs): rounds PROBE_INTERVAL × ⌈n/2⌉ apart for n starting workers, at most the max.
RB_PROBE_INTERVAL = 0.010
RB_PROBE_INTERVAL_MAX = 0.050


def probe_round(starting: int) -> float:
    """Seconds between two rounds of probes with `starting` workers starting at once."""
    return min(RB_PROBE_INTERVAL * -(-starting // 2), RB_PROBE_INTERVAL_MAX)

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
        return f"{self.name} start -n {RB_SIZE} -l 127.0.0.1:0 -- python3 bench/apps/boot_worker.py {RB_BOOT:g}"

    def start(self, size: int) -> Server:
        argv = [str(self.exe), "start", "-n", str(size), "-l", "127.0.0.1:0", "--", sys.executable, str(BOOT_WORKER), f"{RB_BOOT:g}"]
        server = Server(self.name, argv)
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
        if baseline.current is not None:
            systems.append(RbMcluster(baseline.current))
            out["baseline"] = (baseline.current.label, baseline.current.describe)
        if gunicorn_exe is not None:
            systems.append(RbGunicorn(gunicorn_exe, gunicorn_version, workdir))
        else:
            out["gunicorn_why"] = gunicorn_version
        out["gunicorn_version"] = gunicorn_version if gunicorn_exe else None
        out["systems"] = {s.name: s.command() for s in systems}
        budget = Budget(RB_BUDGET + (RB_BASELINE_BUDGET if baseline.current else 0))
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
    base = rb.get("baseline")  # (column, description) with `--baseline REV`
    names = ["mcluster", *([base[0]] if base else []), "gunicorn"]

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
        + (f"**{base[0]}**: the same, with the `mcluster` binary of {base[1]} (`--baseline`). " if base else "")
        + f"Timings: median (min – max) of {RB_ROLLS} rolls."
    )  # fmt: skip
    lines.append("")
    lines.append("| Measurement | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cell(name, fn) for name in names) + " |")
    lines.append("")
    lines.append("Notes:\n")
    lines.append(
        f"- Each system: started with {RB_SIZE} workers, then {RB_ROLLS} SIGHUPs without load (the first three rows), then "
        f"{RB_CLIENTS} Python client threads (fresh connection per request, {CLIENT_TIMEOUT:.0f} s timeout) and {RB_ROLLS} more "
        f"SIGHUPs, {RB_GAP:g} s apart. Old workers are seen exited by polling `/proc/PID/stat` every 2 ms (a zombie counts). "
        "A failure is a connect/read error or an invalid answer."
    )
    lines.append(
        "- The HUPs differ. mcluster boots all 8 replacements at once (`--surge all`) while the old workers serve; once every "
        "one is seen accepting (`/proc`: here a thread in `poll` on the inherited socket), new connections go to them "
        "(steering) and each old worker gets its stop signal once drained. "
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
                f"alone. mcluster probes the starting workers in rounds, {probe_round(1) * 1000:.0f} ms apart for one and "
                f"{probe_round(RB_SIZE) * 1000:.0f} ms apart for {RB_SIZE} (`PROBE_INTERVAL` × ⌈n/2⌉, at most "
                f"`PROBE_INTERVAL_MAX`, in src/cluster.rs), so this is about "
                f"{eight * probe_round(RB_SIZE) / RB_SIZE * 1e6:.0f} µs of master CPU per probe of one worker with "
                f"{RB_SIZE} starting ({one_share * probe_round(1) * 1e6:.0f} µs with one), the scans of `/proc` for each "
                f"worker's other group members and the wake-up of the master's loop included."
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

"""Throughput: the benchmark worker alone (this script hands it its socket), under `mcluster
start -n 1` and `-n 2`, one client, fresh connections; then why -n 2 costs what it costs."""

from __future__ import annotations

import datetime
import os
import re
import socket
import statistics
import sys
import time

from .build import git_describe
from .config import BENCH_WORKER, MCLUSTER, WAIT
from .procs import CLK_TCK, Server, cpu_ticks, kill_all, machine_ticks, switches
from .report import loadavg, ms
from .stats import Budget
from .systems import ready_line


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

# Puts the inherited socket at fd 3 and execs the worker, as a socket-passing master would (no
# LISTEN_PID: the worker helpers accept it unset, as `systemfd --no-pid` leaves it).
TP_LAUNCHER = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.argv[2], sys.argv[2:])"

WORKER_EXIT = re.compile(
    r"bench-worker: exit pid=(\d+) accept=\S+ wakeups=(\d+) empty=(\d+) accepted=(\d+) eagain=(\d+)"
)
CLIENT_LINE = re.compile(
    r"^bench-client: requests=(\d+) errors=(\d+) seconds=(\S+) p50_us=(\d+) p99_us=(\d+) max_us=(\d+)$"
)


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

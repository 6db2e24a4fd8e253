"""Scale: `mcluster start -n N` for large N, mcluster alone (`--scale-only`)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .build import git_describe
from .config import ECHO, MCLUSTER
from .procs import Server, vm_rss_kib
from .report import mib, plural, summary


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

"""Paths and the limits shared by several sections."""

from __future__ import annotations

from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: bench/mcbench/ is two down
BENCH = ROOT / "bench"
RESULTS = BENCH / "results.md"
VENV = ROOT / "target" / "bench-venv"
MCLUSTER = ROOT / "target" / "release" / "mcluster"
ECHO = ROOT / "target" / "release" / "examples" / "fixture-echo"
BENCH_WORKER = ROOT / "target" / "release" / "examples" / "bench-worker"
TOOLS = ROOT / "target" / "bench-tools"  # `cargo install --root` of systemfd and cargo-watch

REPS = 5  # samples per timing measurement
CLIENTS = 8
WAIT = 30.0  # the longest any single wait may take
CLIENT_TIMEOUT = 5.0  # per request (connect, send, read to EOF)
DEV_WAIT = 90.0  # the longest a reload (build included) may take
DEV_CLIENT_TIMEOUT = 30.0  # per request under load: a request waiting out a build is not failed

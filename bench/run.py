#!/usr/bin/env python3
"""mcluster benchmark, side by side with gunicorn (a pre-fork arbiter) in the same run; then
`mcluster dev` side by side with `systemfd --no-pid -- cargo watch -x run`.

One command, from anywhere:  python3 bench/run.py
Writes bench/results.md (and prints it). Python 3.11 standard library only; gunicorn is
installed into target/bench-venv, systemfd and cargo-watch into target/bench-tools (cargo
install, once) by this script when missing. See bench/README.md.
(`python3 bench/run.py --dev-only` runs and prints the dev section alone, leaving results.md;
`--throughput-only` runs and prints the throughput section alone, and replaces that section of
results.md, leaving the others; so do `--dev-switch-only`, `--roll-only` and `--livereload-only`,
the last one the save → page repainted row, in headless Chromium through Selenium.)

The code is the package next to this file, bench/mcbench/: one module per section, and shared
modules for processes, probes, statistics and the report.

Everything binds 127.0.0.1 only. Every server is started in its own session and killed on exit
(SIGTERM, then SIGKILL to every process of that session), whatever happens.
"""

import sys

from mcbench.cli import main
from mcbench.procs import kill_all

if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all()

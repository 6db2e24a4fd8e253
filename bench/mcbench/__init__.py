"""The mcluster benchmark, run by `python3 bench/run.py` (see bench/README.md).

Shared modules: config (paths, limits), procs (processes in their own sessions, always killed;
/proc readers), probe (requests to 127.0.0.1), stats (budgets, percentiles, CPU shares), report
(figures and results.md), build (cargo build, gunicorn's venv, the dev tools), systems (mcluster
and gunicorn as started by the first section). One module per section: start, throughput, dev,
dev_switch, roll, livereload, axum, scale; cli runs them.
"""

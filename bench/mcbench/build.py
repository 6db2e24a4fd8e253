"""Setup: the release build of mcluster, gunicorn's venv, the dev tools, versions."""

from __future__ import annotations

import subprocess
import sys

from .config import BENCH_WORKER, ECHO, MCLUSTER, ROOT, TOOLS, VENV


# The tools this script installs with `cargo install --locked --root target/bench-tools`: their
# executable and the crate that has it.
TOOL_CRATES = {"systemfd": "systemfd", "cargo-watch": "cargo-watch", "watchexec": "watchexec-cli"}


def install_dev_tools(tools: tuple[str, ...] = ("systemfd", "cargo-watch")) -> tuple[dict[str, str] | None, str]:
    """({tool: version}, "") once every tool of `tools` (executables of TOOL_CRATES) is in
    target/bench-tools/bin, or (None, why not)."""
    try:
        missing = [TOOL_CRATES[t] for t in tools if not (TOOLS / "bin" / t).exists()]
        if missing:
            cmd = ["cargo", "install", "--locked", "--root", str(TOOLS), *missing]
            print(
                f"bench: {' '.join(cmd)}\nbench: (once: compiles for a few minutes; cargo's progress follows)",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            subprocess.run(cmd, check=True, timeout=1800)
        versions = {}
        for t in tools:
            out = subprocess.run([str(TOOLS / "bin" / t), "--version"], capture_output=True, text=True, timeout=30, check=True)
            versions[t] = out.stdout.strip().splitlines()[0].split()[1]  # `watchexec 2.8.0 (…)`, more lines
        return versions, ""
    except subprocess.CalledProcessError as e:
        return None, f"could not be installed (`{' '.join(map(str, e.cmd[:2]))} …` exited with {e.returncode})"
    except subprocess.TimeoutExpired as e:
        return None, f"could not be installed (`{' '.join(map(str, e.cmd[:2]))} …` timed out after {e.timeout:.0f} s)"
    except OSError as e:
        return None, f"could not be installed ({e})"


def git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return "git " + out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def build() -> None:
    # --bins as well: `--examples` alone builds only the examples (and the library).
    cmd = ["cargo", "build", "--release", "--bins", "--examples", "--locked"]
    print("bench: " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=600)
    for path in (MCLUSTER, ECHO, BENCH_WORKER):
        if not path.exists():
            raise RuntimeError(f"{path} missing after the build")


def install_gunicorn() -> tuple[Path | None, str]:
    """(the gunicorn executable, its version) or (None, why not)."""
    py = VENV / "bin" / "python"
    exe = VENV / "bin" / "gunicorn"
    try:
        if not py.exists():
            print(f"bench: creating {VENV}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        probe = [str(py), "-c", "import gunicorn; print(gunicorn.__version__)"]
        found = subprocess.run(probe, capture_output=True, text=True, timeout=60)
        if found.returncode != 0:
            print("bench: pip install gunicorn", file=sys.stderr, flush=True)
            subprocess.run(
                [str(py), "-m", "pip", "install", "--quiet", "gunicorn"], check=True, timeout=180
            )
            found = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
        if not exe.exists():
            return None, f"{exe} missing after install"
        return exe, found.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"could not be installed ({e})"

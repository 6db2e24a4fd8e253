"""`--baseline REV`: the `mcluster` binary of another revision, measured beside the current
build in the same run (an "mcluster (REV)" column in the sections that measure mcluster's
master: first section, dev mode, dev switch, roll).

The revision is checked out in a throwaway git worktree, `target/bench-baseline/src` (`git
worktree add --detach`), built there with `cargo build --release --bins --examples --locked`
into its own target dir, `target/bench-baseline/target` (kept: the dependencies compile once,
another revision rebuilds only mcluster), and the worktree is removed again. The binary is
kept as `target/bench-baseline/<commit>/mcluster`, so a later run of the same revision reuses
it without a checkout or a build.

Only the master differs: both columns run the current build's workers and apps, so what the
baseline column measures is the other revision's `mcluster` binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ROOT

BASE = ROOT / "target" / "bench-baseline"
BUILD = ["cargo", "build", "--release", "--bins", "--examples", "--locked"]


@dataclass(frozen=True)
class Baseline:
    rev: str  # as given on the command line
    commit: str  # the full hash it names
    mcluster: Path

    @property
    def label(self) -> str:
        """The column's name: `mcluster (main)`."""
        return f"mcluster ({self.rev})"

    @property
    def describe(self) -> str:
        """`main = git 27733bd`, for the sections' descriptions."""
        return f"`{self.rev}` = git {self.commit[:7]}"


# The baseline of this run, once prepared (cli sets it); None without `--baseline`.
current: Baseline | None = None


def resolve(rev: str) -> str | None:
    """The commit `rev` names in this repository, or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def remove_worktree(src: Path) -> None:
    """Removes the throwaway worktree (and git's record of it), whatever state it is in."""
    git("worktree", "remove", "--force", str(src))
    shutil.rmtree(src, ignore_errors=True)
    git("worktree", "prune")


def prepare(rev: str, commit: str) -> Baseline:
    """The baseline's binary: reused if this commit was built before, else checked out and
    built (raises CalledProcessError, TimeoutExpired, OSError or RuntimeError if that fails)."""
    exe = BASE / commit / "mcluster"
    if exe.exists():
        print(f"bench: baseline {rev} ({commit[:7]}): reusing {exe}", file=sys.stderr, flush=True)
        return Baseline(rev, commit, exe)
    src = BASE / "src"
    # Left by an interrupted run: the directory, or only git's record of it.
    remove_worktree(src)
    BASE.mkdir(parents=True, exist_ok=True)
    print(f"bench: baseline {rev} ({commit[:7]}): git worktree add --detach {src}", file=sys.stderr, flush=True)
    added = git("worktree", "add", "--detach", str(src), commit)
    if added.returncode != 0:
        raise RuntimeError(f"git worktree add failed: {added.stderr.strip()}")
    try:
        env = {**os.environ, "CARGO_TARGET_DIR": str(BASE / "target")}
        print(f"bench: baseline: {' '.join(BUILD)} (target dir {BASE / 'target'})", file=sys.stderr, flush=True)
        subprocess.run(BUILD, cwd=src, env=env, check=True, timeout=1800)
        built = BASE / "target" / "release" / "mcluster"
        if not built.exists():
            raise RuntimeError(f"{built} missing after the build")
        exe.parent.mkdir(parents=True, exist_ok=True)
        partial = exe.with_name("mcluster.partial")
        shutil.copy2(built, partial)
        partial.rename(exe)  # complete or absent: a later run never reuses half a copy
    finally:
        remove_worktree(src)
    return Baseline(rev, commit, exe)

#!/usr/bin/env python3
"""Writes link/hot-text.ld: the functions the master runs in production, to be laid out together.

A page of the master's code is resident once anything on it runs, and the kernel maps the
64 KiB around each page it faults in (fault-around). The linker lays functions out by crate and
name, so the few hundred functions a master runs are spread over most of the binary's text, and
the master's RSS pays for what lies between them (the dev mode, the client commands, the
servers it does not start). `build.rs` hands this script to the linker, which moves these
functions into one output section, `.text.hot`, in front of the rest.

The list is what callgrind sees a master execute in production: `mcluster start -n 4` of the
echo fixture (with `--ready notify` and with the default readiness), `mcluster status`, a roll
(SIGHUP), a worker killed and replaced, and the stop. Patterns are the functions' mangled names
without their hash, so a change elsewhere leaves them valid; a renamed function falls back to
the ordinary layout (`tests/hot_text.rs` fails once too many of the crate's own patterns name
nothing).

Run after a change to what the master does in production, from the repository root:

    apt-get install valgrind   # once
    cargo build --release --bins --examples --locked && python3 link/generate.py
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / "target" / "release" / "mcluster"
ECHO = ROOT / "target" / "release" / "examples" / "fixture-echo"
OUT = ROOT / "link" / "hot-text.ld"
DEADLINE = 120.0  # seconds for each step: everything runs some 50 times slower under callgrind
SIZE = 4

# A legacy-mangled Rust name ends in its hash: `17h` and 16 hex digits, then `E` (and, once LLVM
# has made a local copy, `.llvm.` and digits).
HASH = re.compile(r"17h[0-9a-f]{16}E(\.llvm\.\d+)?$")


class Master:
    """A master under callgrind, its output read line by line (by a thread of its own, so that a
    master that prints nothing more cannot hold up the deadline)."""

    def __init__(self, workdir: Path, ready: list[str]) -> None:
        argv = [
            "valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=no",
            f"--callgrind-out-file={workdir}/callgrind.%p",
            str(EXE), "start", "-n", str(SIZE), *ready, "-l", "127.0.0.1:0",
            "--ready-timeout", "100s", "--kill-timeout", "100s", "--", str(ECHO),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.unread: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.unread.put(line.rstrip("\n"))
        self.unread.put(None)

    def wait_line(self, pattern: str) -> re.Match:
        """The next line that matches, or an exception at the deadline or the master's exit."""
        deadline = time.monotonic() + DEADLINE
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.unread.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"the master exited before a line matching {pattern!r}")
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise RuntimeError(f"no line matching {pattern!r} within {DEADLINE:g} s")


def run_master(workdir: Path, ready: list[str]) -> Path:
    """Runs one production session under callgrind; returns the master's callgrind file."""
    master = Master(workdir, ready)
    try:
        pid = int(master.wait_line(r"^mcluster: listening on \S+ \(master pid (\d+)\)$").group(1))
        master.wait_line(rf"^mcluster: all {SIZE} workers ready")
        subprocess.run([str(EXE), "status"], cwd=workdir, check=True, timeout=DEADLINE,
                       stdout=subprocess.DEVNULL)
        os.kill(pid, signal.SIGHUP)
        master.wait_line(r"^mcluster: rolled \d+ workers to generation 2 in ")
        # Every replacement is ready before the roll ends, so w0's line is among those read.
        victim = next(int(m.group(1)) for line in master.lines
                      if (m := re.search(r"^mcluster: w0 ready \(pid (\d+), generation 2\)", line)))
        os.kill(victim, signal.SIGKILL)
        master.wait_line(r"^mcluster: w0 ready \(pid \d+, generation 2\)")
        os.kill(pid, signal.SIGTERM)
        master.proc.wait(timeout=DEADLINE)
    finally:
        if master.proc.poll() is None:
            master.proc.kill()
            master.proc.wait()
    return workdir / f"callgrind.{pid}"


def executed(callgrind: Path) -> set[str]:
    """The (mangled) names of the functions a callgrind file saw run."""
    names = set()
    for line in callgrind.read_text(errors="replace").splitlines():
        m = re.match(r"^c?fn=\(\d+\) (.+)$", line)
        if m:
            names.add(m.group(1))
    return names


def with_aliases(names: set[str]) -> set[str]:
    """The functions of the binary among `names`, each with every other name of its address.

    LLVM merges functions whose code is the same into one, under one section named after one of
    them; callgrind may report the function under another of its names."""
    out = subprocess.run(["nm", "--defined-only", str(EXE)], capture_output=True, text=True,
                         check=True).stdout
    at: dict[str, set[str]] = {}
    address: dict[str, str] = {}
    for f in (line.split() for line in out.splitlines()):
        if len(f) == 3 and f[1] in "tTwW":
            at.setdefault(f[0], set()).add(f[2])
            address[f[2]] = f[0]
    return {alias for name in names if name in address for alias in at[address[name]]}


def main() -> int:
    for path in (EXE, ECHO):
        if not path.exists():
            print(f"generate.py: {path} is missing: cargo build --release --bins --examples --locked",
                  file=sys.stderr)
            return 1
    names: set[str] = set()
    for ready in (["--ready", "notify"], []):
        with tempfile.TemporaryDirectory(prefix="mcluster-hot-text-") as tmp:
            print(f"generate.py: mcluster start -n {SIZE} {' '.join(ready)} under callgrind",
                  file=sys.stderr, flush=True)
            names |= executed(run_master(Path(tmp), ready))
    patterns = sorted({HASH.sub("", name) for name in with_aliases(names)})
    with OUT.open("w") as out:
        out.write(
            "/* The functions the master runs in production, laid out together (the output section\n"
            "   .text.hot, in front of .text): written by link/generate.py, whose comment says why\n"
            "   and how to run it again. Each pattern is a mangled name without its hash; LLVM puts\n"
            "   a function it thinks cold in .text.unlikely.NAME instead of .text.NAME. */\n"
            "SECTIONS\n{\n  .text.hot :\n  {\n"
        )
        for pattern in patterns:
            out.write(f"    *(.text.{pattern}* .text.unlikely.{pattern}*)\n")
        out.write("  }\n}\nINSERT BEFORE .text;\n")
    print(f"generate.py: {len(patterns)} patterns written to {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

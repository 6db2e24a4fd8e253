"""Formatting of figures for bench/results.md, and the writer of one section in place."""

from __future__ import annotations

import statistics
from pathlib import Path

from .config import REPS, RESULTS


def pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def put_section(heading: str, section: list[str], before: str | None = None) -> None:
    """Replaces the section of bench/results.md that starts at `heading` (to the next `## `);
    if there is none, puts it before the first heading starting with `before`, or at the end."""
    text = RESULTS.read_text() if RESULTS.exists() else "# mcluster benchmark results\n\n"
    lines = text.split("\n")
    body = "\n".join(section).rstrip("\n").split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + body + [""] + lines[end:]
    elif before is not None and any(line.startswith(before) for line in lines):
        at = next(i for i, line in enumerate(lines) if line.startswith(before))
        lines = lines[:at] + body + [""] + lines[at:]
    else:
        lines = [*lines[: len(lines) - (1 if lines and lines[-1] == "" else 0)], "", *body, ""]
    RESULTS.write_text("\n".join(lines))


def ms(seconds: float) -> str:
    v = seconds * 1000
    if v < 10:
        return f"{v:.2f} ms"
    if v < 100:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms"


def plural(n: int) -> str:
    return f"{n} worker" + ("" if n == 1 else "s")


def summary(values: list[float], fmt=ms, want: int = REPS) -> str:
    if not values:
        return "n/a"
    text = f"**{fmt(statistics.median(values))}** ({fmt(min(values))} – {fmt(max(values))})"
    if len(values) < want:
        text += f" [{len(values)}/{want} runs]"
    return text


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def failures_and_notes(systems: list, notes: list[str]) -> list[str]:
    """The report lines after a table: each system's load failures by kind, the notes, and the
    heading of the raw samples."""
    lines = []
    for label, result in systems:
        d = result.get("load")
        if d and d["errors"]:
            lines.append(f"- {label} failures by kind: " + ", ".join(f"{k}: {n}" for k, n in d["errors"].items()))
    for note in notes:
        lines.append(f"- {'' if note.startswith('load average') else 'Problem: '}{note}")
    lines.append("")
    lines.append("Raw samples (ms):\n")
    return lines

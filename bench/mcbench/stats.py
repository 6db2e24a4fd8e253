"""Time budgets and the arithmetic of samples: percentiles, CPU shares, durations in logs."""

from __future__ import annotations

import math
import re
import time


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def parse_human(text: str) -> float:
    """`358ms`, `1.32s` (mcluster), `0.18s` (cargo) → seconds."""
    m = re.fullmatch(r"([\d.]+)(ms|s)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        raise ValueError("no values")
    # nearest rank
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def cpu_share(parts: list[tuple[float, float]]) -> float | None:
    """Total CPU over total wall time of several windows: a share of one core."""
    wall = sum(w for _, w in parts)
    return sum(c for c, _ in parts) / wall if wall > 0 else None

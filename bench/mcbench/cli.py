"""The command line: the whole run, or one section (`--X-only`)."""

from __future__ import annotations

import subprocess
import sys
import time

from . import baseline
from .axum import axum_section
from .baseline import prepare, resolve
from .build import build
from .config import RESULTS
from .dev import dev_report, measure_dev
from .dev_switch import DS_HEADING, ds_report, measure_dev_switch
from .livereload import LR_HEADING, lr_report, measure_livereload
from .report import loadavg, put_section
from .roll import RB_HEADING, measure_roll_boot, rb_report
from .scale import SCALE_HEADING, measure_scale, scale_report
from .start import measure_start, start_report
from .throughput import THROUGHPUT_HEADING, measure_throughput, throughput_report


ONE_SECTION = {
    "--scale-only": (measure_scale, scale_report, SCALE_HEADING, None),
    "--dev-switch-only": (measure_dev_switch, ds_report, DS_HEADING, None),
    "--livereload-only": (measure_livereload, lr_report, LR_HEADING, None),
    "--roll-only": (measure_roll_boot, rb_report, RB_HEADING, None),
    "--throughput-only": (measure_throughput, throughput_report, THROUGHPUT_HEADING, "## Dev mode"),
}


# The sections with an "mcluster (REV)" column under `--baseline REV`: the whole run, or these.
BASELINE_SECTIONS = ("--dev-only", "--dev-switch-only", "--roll-only")


def baseline_arg(argv: list[str]) -> str | None:
    """The REV of `--baseline REV` or `--baseline=REV`, None without it; ValueError if the flag
    has no value."""
    for i, arg in enumerate(argv):
        if arg == "--baseline":
            if i + 1 == len(argv) or argv[i + 1].startswith("-") or not argv[i + 1]:
                raise ValueError("--baseline needs a revision (a branch, a tag or a commit)")
            return argv[i + 1]
        if arg.startswith("--baseline="):
            if arg == "--baseline=":
                raise ValueError("--baseline needs a revision (a branch, a tag or a commit)")
            return arg.split("=", 1)[1]
    return None


def main() -> int:
    t_all = time.monotonic()
    load_start = loadavg()
    args = sys.argv[1:]
    try:
        rev = baseline_arg(args)
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    commit = None
    if rev is not None:
        other = [a for a in args if a.endswith("-only") and a not in BASELINE_SECTIONS]
        if other:
            print(f"bench: error: {other[0]} has no baseline column (--baseline goes with the whole run, {', '.join(BASELINE_SECTIONS)})", file=sys.stderr)
            return 2
        commit = resolve(rev)
        if commit is None:
            print(f"bench: error: --baseline {rev}: not a revision of this repository", file=sys.stderr)
            return 2
    try:
        build()
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        # The previous bench/results.md is left as it was.
        print(f"bench: the build failed, nothing was measured: {e}", file=sys.stderr)
        return 1
    if rev is not None:
        try:
            baseline.current = prepare(rev, commit)
        except (subprocess.SubprocessError, RuntimeError, OSError) as e:
            print(f"bench: the baseline's build ({rev}) failed, nothing was measured: {e}", file=sys.stderr)
            return 1
    if "--dev-only" in sys.argv[1:]:
        # For working on the benchmark: the dev section alone, printed, results.md untouched.
        dev, dev_notes = measure_dev()
        print("\n".join(dev_report(dev, dev_notes)))
        return 0
    # One section alone (for working on the benchmark): measured, printed, and put in place of
    # that section of bench/results.md (or added); the other sections are left as they are.
    for flag, (measure, section_report, heading, before) in ONE_SECTION.items():
        if flag in sys.argv[1:]:
            values, notes = measure()
            section = section_report(values, notes)
            print("\n".join(section))
            put_section(heading, section, before)
            return 0
    if "--axum-only" in sys.argv[1:]:
        # For working on the benchmark: the axum section alone, printed, results.md untouched.
        print("\n".join(axum_section()))
        return 0
    start, notes = measure_start(load_start)

    tp, tp_notes = measure_throughput()
    dev, dev_notes = measure_dev()
    ds, ds_notes = measure_dev_switch()
    rb, rb_notes = measure_roll_boot()
    lr, lr_notes = measure_livereload()
    text = start_report(start, notes, time.monotonic() - t_all)
    text += "\n" + "\n".join(throughput_report(tp, tp_notes)) + "\n"
    text += "\n".join(dev_report(dev, dev_notes)) + "\n"
    text += "\n".join(ds_report(ds, ds_notes)) + "\n"
    text += "\n".join(rb_report(rb, rb_notes)) + "\n"
    text += "\n".join(lr_report(lr, lr_notes)) + "\n"
    text += "\n".join(axum_section())  # the axum section: its own table
    RESULTS.write_text(text)
    print(text)
    return 0

"""The command line: the whole run, or one section (`--X-only`)."""

from __future__ import annotations

import subprocess
import sys
import time

from .axum import axum_section
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


def main() -> int:
    t_all = time.monotonic()
    load_start = loadavg()
    try:
        build()
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        # The previous bench/results.md is left as it was.
        print(f"bench: the build failed, nothing was measured: {e}", file=sys.stderr)
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

"""Progress of a long loop on stderr: tqdm's bar at a terminal; elsewhere (a log, a notebook, a pipe), where a
carriage-return bar is either silent or garbage, plain lines: one per tenth of the work or per PROGRESS_EVERY
seconds, whichever comes first, and a last one with the time taken."""

from __future__ import annotations

import sys
import time

PROGRESS_EVERY = 30.0  # seconds between two lines when a tenth of the work takes longer


def with_progress(iterable, desc: str, enabled: bool = True, *, total: int | None = None, unit: str = "it", file=None):
    """`iterable`, reporting on `file` (stderr) as it is consumed; unchanged when not `enabled`."""
    if not enabled:
        return iterable
    file = file or sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if file.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, file=file, leave=False, unit=unit)
    return _lines(iterable, desc, total, unit, file)


def _lines(iterable, desc, total, unit, file):
    t0 = last = time.perf_counter()
    step = max(1, -(-total // 10)) if total else None
    n = 0

    def line(text):
        print(f"{desc}: {text}", file=file, flush=True)

    for item in iterable:
        yield item
        n += 1
        now = time.perf_counter()
        if (step and n % step == 0 and n != total) or now - last >= PROGRESS_EVERY:
            line(f"{n}/{total} {unit} ({100 * n // total}%), {now - t0:.1f} s" if total else
                 f"{n} {unit}, {now - t0:.1f} s")
            last = now
    line(f"{n} {unit} in {time.perf_counter() - t0:.1f} s")

"""Timing that notices a busy machine: repeats, their spread, the load average, a verdict.

Used by :mod:`analysis.bench` (and any other benchmark module).  A benchmark times each case
with :func:`timeit` (median of repeats, and the relative spread of the repeats), samples the
load with :func:`Monitor.sample` between sections, and asks :meth:`Monitor.verdict` at the end
whether the run is trustworthy:

- **load**: the 1-minute load average before the run (other jobs only) must stay below
  ``MAX_LOAD_BEFORE`` × cpu_count, and no sample during the run may exceed
  ``MAX_LOAD_DURING`` × cpu_count (the benchmark itself adds up to cpu_count);
- **spread**: the median, over the timed cases, of the repeats' relative spread
  ``(q75 − q25) / median`` must stay below ``MAX_SPREAD`` (a preempted repeat widens it).

:func:`run_until_accepted` runs a benchmark up to ``attempts`` times, waiting for the load to
drop before each retry, and returns the first accepted run (or the last one, marked rejected).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

__all__ = [
    "MAX_LOAD_BEFORE",
    "MAX_LOAD_DURING",
    "MAX_SPREAD",
    "Monitor",
    "Timing",
    "load_per_cpu",
    "relative_spread",
    "run_until_accepted",
    "timeit",
    "wait_for_quiet",
]

MAX_LOAD_BEFORE = 0.5  # × cpu_count, 1-minute load average before the run
MAX_LOAD_DURING = 1.5  # × cpu_count, any sample during the run (includes our own threads)
MAX_SPREAD = 0.15  # median relative inter-quartile spread of the repeats


def _cpus():
    return os.cpu_count() or 1


def load_per_cpu():
    """The 1-minute load average divided by the number of CPUs."""
    return os.getloadavg()[0] / _cpus()


@dataclass
class Timing:
    """Median wall time of ``repeats`` calls and their relative spread ``(q75 − q25)/median``."""

    median: float
    repeats: int
    spread: float
    times: list = field(default_factory=list)


def relative_spread(times):
    """``(q75 − q25) / median`` of ``times`` (0 for fewer than 3 times)."""
    if len(times) < 3:
        return 0.0
    q = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return (q[2] - q[0]) / med if med > 0 else 0.0


def timeit(fn, *, budget_s, max_repeats, min_repeats=3, slow_s=2.0):
    """Time ``fn()`` after one warm-up call; return ``(Timing, result of the warm-up)``.

    Repeats until ``budget_s`` is spent (at least ``min_repeats``, at most ``max_repeats``).
    A call slower than ``slow_s`` is timed once more and the faster of the two kept (spread
    0 is reported: two calls say little about the spread).
    """
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    if first > slow_s:
        t0 = time.perf_counter()
        fn()
        second = time.perf_counter() - t0
        return Timing(min(first, second), 2, 0.0, [first, second]), result
    times = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), len(times), relative_spread(times), times), result


@dataclass
class Monitor:
    """Load samples and timing spreads of one benchmark run, and the verdict on them."""

    cpu_count: int = field(default_factory=_cpus)
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])
    load_samples: list = field(default_factory=list)
    spreads: list = field(default_factory=list)

    def sample(self, where=""):
        """Record the 1-minute load average now."""
        self.load_samples.append((where, os.getloadavg()[0]))

    def add(self, timing):
        """Record a :class:`Timing`'s spread (cases timed only twice are skipped)."""
        if timing.repeats >= 3:
            self.spreads.append(timing.spread)
        return timing

    def verdict(self):
        """``dict(accepted=bool, reasons=[...], ...)`` for the JSON sidecar."""
        reasons = []
        cpus = self.cpu_count
        if self.load_before > MAX_LOAD_BEFORE * cpus:
            reasons.append(f"load average {self.load_before:.2f} before the run exceeds "
                           f"{MAX_LOAD_BEFORE:g} x {cpus} CPUs")
        peak = max((v for _, v in self.load_samples), default=0.0)
        if peak > MAX_LOAD_DURING * cpus:
            reasons.append(f"load average reached {peak:.2f} during the run (limit "
                           f"{MAX_LOAD_DURING:g} x {cpus} CPUs)")
        spread = statistics.median(self.spreads) if self.spreads else 0.0
        if spread > MAX_SPREAD:
            reasons.append(f"median spread of the repeats {spread:.2f} exceeds {MAX_SPREAD:g}")
        return dict(
            accepted=not reasons, reasons=reasons, cpu_count=cpus,
            load_before=self.load_before, load_peak=peak,
            load_samples=[list(s) for s in self.load_samples],
            median_spread=spread, max_spread=max(self.spreads, default=0.0),
            timed_cases=len(self.spreads),
            limits=dict(max_load_before=MAX_LOAD_BEFORE, max_load_during=MAX_LOAD_DURING,
                        max_spread=MAX_SPREAD),
        )


def wait_for_quiet(*, timeout_s, poll_s=10.0, limit=MAX_LOAD_BEFORE, sleep=time.sleep):
    """Wait until the load per CPU is below ``limit`` (at most ``timeout_s``); return whether
    it is."""
    deadline = time.monotonic() + timeout_s
    while load_per_cpu() > limit:
        if time.monotonic() >= deadline:
            return False
        sleep(poll_s)
    return True


def run_until_accepted(run, *, attempts=2, wait_s=120.0, log=print, sleep=time.sleep):
    """Call ``run(monitor)`` until its monitor's verdict accepts it (at most ``attempts``).

    Before each retry it waits up to ``wait_s`` for the machine to quieten.  Returns
    ``(result, verdict)``; ``verdict["attempts"]`` counts the runs made.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1; got {attempts}")
    for k in range(1, attempts + 1):
        monitor = Monitor()
        result = run(monitor)
        verdict = monitor.verdict()
        verdict["attempts"] = k
        if verdict["accepted"] or k == attempts:
            return result, verdict
        log(f"benchmark run {k} rejected ({'; '.join(verdict['reasons'])}); waiting up to "
            f"{wait_s:g} s for a quiet machine, then repeating")
        wait_for_quiet(timeout_s=wait_s, sleep=sleep)
    raise AssertionError("unreachable")  # pragma: no cover


"""Timing: a wall-clock and a CUDA timer, the interleaved timing loop, and its summary.

Method (docs/benchmarks.md): every operation is timed *interleaved* with its reference
in the same loop (``op, ref, op, ref, ...`` with the order rotated each round), so that
both see the same machine state; a ratio of the two medians is then meaningful on a
shared, noisy machine where a bare time is not. Each timed group gets one untimed warm-up
round, then ``repeats`` rounds chosen from the warm-up time to fill a time budget (within
``[min_repeats, max_repeats]``).

On the GPU each call is bracketed by ``Device.synchronize()`` and timed with CUDA events
recorded on the null stream after the synchronisation, so the time covers all the work the
call queued, from CuPy or PyTorch.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable


def cpu_timer(fn: Callable) -> float:
    """Wall time of ``fn()`` in seconds (its result is dropped after the clock stops)."""
    t0 = time.perf_counter()
    out = fn()
    t1 = time.perf_counter()
    del out
    return t1 - t0


def cuda_timer(cupy) -> Callable[[Callable], float]:
    """A timer for GPU work: device-synchronised, measured with CUDA events."""

    def timer(fn: Callable) -> float:
        dev = cupy.cuda.Device()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        dev.synchronize()
        start.record()
        out = fn()
        dev.synchronize()  # all streams, whichever library queued the work
        end.record()
        end.synchronize()
        del out
        return cupy.cuda.get_elapsed_time(start, end) / 1e3

    return timer


def measure(
    fns: dict, timer: Callable = cpu_timer, min_repeats: int = 3, max_repeats: int = 9, budget_s: float = 4.0
) -> dict:
    """Time the callables of ``fns`` interleaved; return ``{name: [seconds, ...]}``.

    One warm-up round (not returned) estimates the cost of a round; the number of rounds is
    ``ceil(budget_s / round)`` clipped to ``[min_repeats, max_repeats]``. Round ``r`` calls
    the functions starting at position ``r mod len(fns)``, so no function always runs first.
    """
    if not fns:
        raise ValueError("fns: nothing to measure")
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(
            f"min_repeats, max_repeats: need 1 <= min_repeats <= max_repeats, got {min_repeats}, {max_repeats}"
        )
    names = list(fns)
    warm = sum(timer(fns[n]) for n in names)
    repeats = min(max_repeats, max(min_repeats, math.ceil(budget_s / max(warm, 1e-9))))
    samples = {n: [] for n in names}
    for r in range(repeats):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            samples[n].append(timer(fns[n]))
    return samples


def summarize(samples: list) -> dict:
    """``seconds`` (median), ``seconds_min``, ``seconds_max``, ``repeats`` of a list of times."""
    if not samples:
        raise ValueError("samples: empty")
    return {
        "seconds": float(statistics.median(samples)),
        "seconds_min": float(min(samples)),
        "seconds_max": float(max(samples)),
        "repeats": len(samples),
    }

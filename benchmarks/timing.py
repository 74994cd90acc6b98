"""Timing: a wall-clock and a CUDA timer, the interleaved timing loop, and its summary.

Method (docs/benchmarks.md): every operation is timed *interleaved* with its reference
in the same loop (``op, ref, op, ref, ...`` with the order rotated each round), so that
both see the same machine state; a ratio of the two medians is then meaningful on a
shared, noisy machine where a bare time is not. Each timed group gets one untimed warm-up
round, then ``repeats`` rounds chosen from the warm-up time to fill a time budget (within
``[min_repeats, max_repeats]``).

Several runtimes (NumPy and PyTorch on the CPU, each with its default thread count and with
one thread) are timed in *alternating rounds* (:func:`measure_rounds`): each round runs every
:class:`Group` once, the groups' order rotated each round; before a group's calls a CPU group
pauses ``settle_s`` (so the previous runtime's idle worker threads stop spinning on the cores
it needs) and runs its ``enter`` (set its thread count, wake its thread pool with a small
product), both untimed. Calling two threaded runtimes back to back, call by call, makes both
pathologically slow on few cores; one group after the other puts them at different moments
of a shared machine. Alternating rounds are the middle way.

On the GPU each call is bracketed by ``Device.synchronize()`` and timed with CUDA events
recorded on the null stream after the synchronisation, so the time covers all the work the
call queued, from CuPy or PyTorch.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
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
    samples: dict = {n: [] for n in names}
    for r in range(repeats):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            samples[n].append(timer(fns[n]))
    return samples


#: :func:`measure_rounds` calls a group's functions once untimed before each visit when
#: they took under this many seconds in all in its warm-up round.
REWARM_S = 0.05


@dataclass
class Group:
    """Callables timed together in each round of :func:`measure_rounds`.

    ``fns``: ``{name: () -> result}``; ``timer``: how each call is timed; ``enter``: run
    untimed before the group's calls in every round (set a thread count, wake a pool);
    ``settle_s``: pause before ``enter`` (CPU groups: let other runtimes' threads go idle;
    GPU groups: 0).
    """

    fns: dict
    timer: Callable = cpu_timer
    enter: Callable[[], object] | None = None
    settle_s: float = 0.0


def measure_rounds(
    groups: dict,
    min_repeats: int = 3,
    max_repeats: int = 9,
    budget_s: float = 4.0,
    rewarm_s: float = REWARM_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Time the :class:`Group` s of ``groups`` (``{name: Group}``) in alternating rounds.

    Returns ``{group name: {fn name: [seconds, ...]}}``. One warm-up round (not returned)
    estimates the cost of a round; the number of rounds is ``ceil(len(groups) * budget_s /
    round)`` clipped to ``[min_repeats, max_repeats]`` (``budget_s`` per group, as in
    :func:`measure`). Round ``r`` visits the groups starting at position ``r mod len(groups)``
    and, inside each group, the functions starting at ``r mod len(fns)``. Before each visit,
    outside the clock, the group sleeps its ``settle_s`` (only when there are several
    groups), runs its ``enter`` and, when its calls took under ``rewarm_s`` in all in the
    warm-up round, calls each function once untimed: a thread pool that has slept wakes
    slowly, a cost that matters only to short calls (docs/benchmarks.md).
    """
    if not groups or not all(g.fns for g in groups.values()):
        raise ValueError("groups: nothing to measure")
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(
            f"min_repeats, max_repeats: need 1 <= min_repeats <= max_repeats, got {min_repeats}, {max_repeats}"
        )
    gnames = list(groups)
    cost: dict = {}

    def visit(g: Group, r: int, out: dict | None) -> float:
        if g.settle_s > 0 and len(gnames) > 1:
            sleep(g.settle_s)
        if g.enter is not None:
            g.enter()
        if out is not None and cost[id(g)] < rewarm_s:
            for fn in g.fns.values():
                fn()
        names = list(g.fns)
        spent = 0.0
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            t = g.timer(g.fns[n])
            spent += t
            if out is not None:
                out[n].append(t)
        return spent

    for gn in gnames:
        cost[id(groups[gn])] = visit(groups[gn], 0, None)
    warm = sum(cost.values())
    repeats = min(max_repeats, max(min_repeats, math.ceil(len(gnames) * budget_s / max(warm, 1e-9))))
    samples: dict = {gn: {n: [] for n in groups[gn].fns} for gn in gnames}
    for r in range(repeats):
        for j in range(len(gnames)):
            gn = gnames[(r + j) % len(gnames)]
            visit(groups[gn], r, samples[gn])
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

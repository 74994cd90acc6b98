"""Where the forward's time goes: the parts of :func:`fpt_ref.forward.forward` timed inside real forwards.

``python -m fpt_ref.benchmarks.profile [--arch paper] [--size l] [--dtype float32] [--repeats 10]``

The model and inputs are the benchmark ladder's (:func:`fpt_ref.benchmarks.ops.build_model`). The
functions :func:`~fpt_ref.forward.forward` calls through its module (``_dense``, ``attention``,
``norm``, ``rope``, ``rope_tables`` and the activation) are wrapped with timers for the run and
restored after it, so the parts are measured where they run (cold weights, the allocator's state
between layers), not in isolation; the wrappers return what they wrap, so the forward computes
the same output. Printed per forward: each part's milliseconds and share, the dense products'
FLOP/s against the same-run ``n x n`` reference GEMM (:func:`fpt_ref.benchmarks.ops.matmul_fn`),
and the ``ratio_matmul`` the forward would reach if everything but the dense products took no
time (docs/benchmarks.md, "Where we stand").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time

import numpy as np

from . import ops

#: the functions of fpt_ref.forward that are timed, in the order they are reported
PARTS = ("_dense", "attention", "rope", "rope_tables", "norm", "activation")


@contextlib.contextmanager
def timed_parts(totals: dict):
    """Wrap :data:`PARTS` of :mod:`fpt_ref.forward` so that each call adds its seconds to ``totals[part]``."""
    F = importlib.import_module("fpt_ref.forward")
    saved = {name: getattr(F, name) for name in PARTS if name != "activation"}
    acts = dict(F.ACTIVATIONS)

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
            return out

        return timed

    try:
        for name, fn in saved.items():
            setattr(F, name, wrap(name, fn))
        for key, fn in acts.items():
            F.ACTIVATIONS[key] = wrap("activation", fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(F, name, fn)
        F.ACTIVATIONS.update(acts)


def profile(
    arch: str = "paper", size: str = "l", dtype: str = "float32", repeats: int = 10, ladder: str = "cpu"
) -> dict:
    """Median seconds of the forward and the mean seconds of each part per forward (dict; see the module doc)."""
    F = importlib.import_module("fpt_ref.forward")
    (z,) = ops.ladder(ladder, [size], arch=arch)
    model = ops.build_model(z, dtype, np)
    x = ops.build_inputs(model, z, np)
    mm = ops.matmul_fn(2048, dtype, np)
    F.forward(model, x)  # the fused weights are built and kept once per layer, as in every later call
    totals: dict = {}
    times, mm_times = [], []
    with timed_parts(totals):
        for _ in range(repeats):
            t0 = time.perf_counter()
            F.forward(model, x)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mm()
            mm_times.append(time.perf_counter() - t0)
    parts = {k: totals.get(k, 0.0) / repeats for k in PARTS}
    total = sum(times) / repeats  # the parts are means over the same calls
    flops = ops.forward_flops(model, z.b, z.s)
    attn = 2 * z.b * z.s * z.s * sum(hd.k + hd.v for L in model.layers for hd in L.heads)  # Q K^T and (.) V
    ref_rate = ops.matmul_flops(2048) / statistics.median(mm_times)
    dense_rate = (flops - attn) / parts["_dense"]
    return dict(
        arch=arch,
        size=size,
        dtype=dtype,
        forward_median_s=statistics.median(times),
        forward_mean_s=total,
        parts_s=parts,
        other_s=total - sum(parts.values()),
        flops=flops,
        dense_flops=flops - attn,
        dense_rate=dense_rate,
        ref_rate=ref_rate,
        ratio_matmul=(flops / statistics.median(times)) / ref_rate,
        ratio_matmul_if_only_dense=(flops / parts["_dense"]) / ref_rate,
    )


def report(r: dict) -> str:
    """The profile as a Markdown table and two summary lines."""
    total = r["forward_mean_s"]
    lines = [
        f"{r['arch']} `{r['size']}` {r['dtype']}: forward {r['forward_median_s'] * 1e3:.1f} ms (median), "
        f"{r['flops'] / 1e9:.2f} GFLOP",
        "",
        "| part | ms per forward | share |",
        "|---|---|---|",
    ]
    for name, sec in list(r["parts_s"].items()) + [("everything else", r["other_s"])]:
        lines.append(f"| {name} | {sec * 1e3:.1f} | {100 * sec / total:.0f} % |")
    lines += [
        "",
        f"dense products: {r['dense_rate'] / 1e9:.0f} GFLOP/s = {r['dense_rate'] / r['ref_rate']:.2f} of the same-run "
        f"2048^3 GEMM ({r['ref_rate'] / 1e9:.0f} GFLOP/s); ratio_matmul {r['ratio_matmul']:.2f}, "
        f"{r['ratio_matmul_if_only_dense']:.2f} if nothing but the dense products took time",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fpt_ref.benchmarks.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=ops.ARCHS, default="paper")
    ap.add_argument("--size", default="l", help="a size of the ladder (default l)")
    ap.add_argument("--ladder", choices=sorted(ops.LADDERS), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    try:
        r = profile(args.arch, args.size, args.dtype, args.repeats, args.ladder)
    except ValueError as exc:
        print(f"python -m fpt_ref.benchmarks.profile: {exc}", file=sys.stderr)
        return 2
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

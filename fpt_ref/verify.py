"""Run two models on the same inputs and measure how far apart their outputs are."""

from __future__ import annotations

import numpy as np

from .forward import forward, trace
from .init import random_inputs
from .model import Model
from .tolerance import error_stats, preservation_scale, tolerance_abs, ulp
from .xp import to_numpy


def common_inputs(a: Model, b: Model, batch: int = 4, seq: int | None = None, seed: int = 0):
    """Inputs valid for both models: ``(x_a, x_b)``.

    Token ids are drawn below both vocabularies; real inputs are drawn at ``a``'s width and
    zero-padded to ``b``'s (the new input columns of a hidden expansion are zero, Theorem 3.5).
    """
    xa, (xb,) = _inputs_for_all(a, [b], batch, seq, seed)
    return xa, xb


def _inputs_for_all(a: Model, others: list, batch, seq, seed):
    """``(x_a, [x_b for b in others])``: one draw of inputs valid for ``a`` and every other model."""
    for b in others:
        if (a.embed is None) != (b.embed is None):
            raise ValueError("models: one takes token ids and the other real-valued inputs; they cannot be compared")
        if a.o != b.o:
            raise ValueError(f"models: output sizes differ (o={a.o} vs o={b.o})")
        if a.embed is None and b.h < a.h:
            raise ValueError(
                f"models: the second model is narrower (h={b.h}) than the first (h={a.h}); give the smaller model first"
            )
    s_max = min(m.s_max for m in [a] + others)
    seq = s_max if seq is None else seq
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= s_max:
        raise ValueError(f"seq: must be between 1 and {s_max} (the smaller s_max), got {seq!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: must be an integer >= 1, got {batch!r}")
    if a.embed is not None:
        x = random_inputs(min([a] + others, key=lambda m: m.vocab), batch, seq, seed)
        return x, [x] * len(others)
    x = random_inputs(a, batch, seq, seed)
    return x, [np.pad(x, [(0, 0), (0, 0), (0, b.h - a.h)]).astype(b.dtype) for b in others]


def verify(a: Model, b: Model, batch: int = 4, seq: int | None = None, seed: int = 0) -> dict:
    """Compare ``forward(a, x)`` with ``forward(b, x)`` on common random inputs.

    Returns ``max_abs``, ``max_rel``, ``max_ulp`` (:func:`fpt_ref.tolerance.error_stats`), the
    preservation tolerance as ``tol_abs`` (:func:`fpt_ref.tolerance.tolerance_abs`, derived in
    docs/tolerance.md) and, in the unit of ``max_ulp``, ``tol_ulp``, and ``ok``
    (``max_abs <= tol_abs``, both finite).
    """
    return verify_each(a, [b], batch, seq, seed)[0]


def verify_each(a: Model, others: list, batch: int = 4, seq: int | None = None, seed: int = 0) -> list:
    """:func:`verify` of ``a`` against each model of ``others``, running ``a`` only once."""
    xa, xbs = _inputs_for_all(a, list(others), batch, seq, seed)
    tr = trace(a, xa)  # one pass over a: its output and what the tolerance scale needs
    ref = tr.output  # [b, s, o]  = forward(a, xa)
    scale = preservation_scale(a, tr)
    ulp_out = ulp(float(np.max(np.abs(to_numpy(ref)))), a.dtype)
    results = []
    for b, xb in zip(others, xbs):
        stats = error_stats(ref, forward(b, xb))
        tol = tolerance_abs(a, b, xa.shape[1], scale)
        stats["tol_abs"] = tol
        stats["tol_ulp"] = tol / ulp_out if ulp_out > 0 else float("inf")
        # a non-finite error or scale (overflow) is never "preserved"
        stats["ok"] = bool(np.isfinite(stats["max_abs"]) and np.isfinite(tol) and stats["max_abs"] <= tol)
        results.append(stats)
    return results

"""Run two models on inputs that exercise all of them and measure how far apart their outputs are.

What a "preserved" verdict of :func:`verify` rests on (README, "What a preserved verdict
guarantees, and what it does not"):

- **inputs**: for token models, every token id of the vocabulary the two models share, laid
  out over sequences of the full length (:func:`fpt_ref.inputs.token_tiling`), so every row
  of ``embed`` and of ``pos`` is read; for real-valued models, one full-length sequence; in
  both cases ``batch`` random sequences of length ``seq`` besides;
- **the function**: on every one of those inputs, every output entry of ``b`` lies within the
  derived rounding tolerance of ``a``'s (:func:`fpt_ref.tolerance.tolerance_abs`);
- **the blocks** (when a manifest is given): every block is what the manifest claims, bit for
  bit, and the zero blocks include a proved constraint set (:mod:`fpt_ref.audit`).

Inputs are processed in batches whose forward pass fits ``max_bytes``
(:func:`fpt_ref.memory.forward_bytes`), so a 150,000-token vocabulary is covered in pieces.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from .checks import check_float, check_int
from .forward import forward, trace
from .init import random_inputs
from .inputs import batches, real_inputs, token_tiling
from .memory import forward_bytes, model_bytes, require
from .model import Model, dims
from .tolerance import error_stats, preservation_scale, tolerance_abs, ulp
from .xp import to_numpy

#: default memory budget of one batch's forward pass
MAX_BATCH_BYTES = 256 * 1024**2


class _Fold(TypedDict):
    """One compared model's running figures over the batches (:func:`verify_each`)."""

    max_abs: float
    ref: float
    finite: bool


def _check_models(a: Model, others: list) -> None:
    for b in others:
        if (a.embed is None) != (b.embed is None):
            raise ValueError("models: one takes token ids and the other real-valued inputs; they cannot be compared")
        if a.o != b.o:
            raise ValueError(f"models: output sizes differ (o={a.o} vs o={b.o})")
        if a.embed is None and b.h < a.h:
            raise ValueError(
                f"models: the second model is narrower (h={b.h}) than the first (h={a.h}); give the smaller model first"
            )


def _domain_loss(a: Model, b: Model) -> str | None:
    """Why ``b`` cannot compute ``a``'s function on all of ``a``'s inputs (``None`` if it can)."""
    if a.vocab is not None:  # a takes token ids
        assert b.vocab is not None  # so does b (_check_models)
        if b.vocab < a.vocab:
            return f"the second model has {b.vocab} token ids, the first {a.vocab}: ids {b.vocab}.. are lost"
    if b.s_max < a.s_max:
        return f"the second model takes {b.s_max} positions, the first {a.s_max}: longer inputs are lost"
    return None


def _seq(a: Model, others: list, seq) -> int:
    s_max = min(m.s_max for m in [a] + others)
    return s_max if seq is None else check_int("seq", seq, 1, s_max)


def _pad(x, a: Model, others: list) -> list:
    """``x`` as an input of each model of ``others``: real inputs padded to its width with zeros
    (``M_I = 0``), or with the row mean for a LayerNorm model (mean padding, docs/spec.md 4.2)."""
    if a.embed is not None:
        return [x] * len(others)
    out = []
    for b in others:
        if b.arch.norm == "layer" and b.h > a.h:
            mean = np.mean(x, axis=-1, keepdims=True, dtype=np.float64).astype(x.dtype)  # [b, s, 1]
            out.append(np.concatenate([x, np.repeat(mean, b.h - a.h, axis=-1)], axis=-1).astype(b.dtype))
        else:
            out.append(np.pad(x, [(0, 0), (0, 0), (0, b.h - a.h)]).astype(b.dtype))
    return out


def _random_for_all(a: Model, others: list, batch: int, seq: int, seed: int, scale: float):
    if a.embed is not None:
        x = random_inputs(min([a] + others, key=lambda m: m.vocab), batch, seq, seed)
    else:
        x = real_inputs(batch, seq, a.h, a.dtype, seed, scale)
    return x, _pad(x, a, others)


def input_sets(a: Model, others: list, batch: int = 4, seq: int | None = None, seed: int = 0, scale: float = 1.0):
    """The named input sets of :func:`verify_each`: ``[(name, x_a), ...]`` (NumPy).

    ``"all tokens"`` (token models: every id shared by all models, full-length rows) or
    ``"full length"`` (real models: one sequence of ``s_max`` positions, seed ``seed + 1``),
    then ``"random"`` (``batch`` sequences of ``seq`` positions).
    """
    _check_models(a, others)
    seq = _seq(a, others, seq)
    batch = check_int("batch", batch, 1)
    s_full = _seq(a, others, None)
    scale = check_float("scale", scale, positive=True)
    if a.embed is not None and scale != 1.0:
        raise ValueError("scale: applies to real-valued inputs; these models take token ids")
    itemsize = 8 if a.embed is not None else np.dtype(a.dtype).itemsize
    width = 1 if a.embed is not None else a.h
    require(batch * seq * width * itemsize, f"the random inputs (batch={batch} x seq={seq})")
    if a.embed is not None:
        vocab = min(m.vocab for m in [a] + others)
        cover = ("all tokens", token_tiling(vocab, s_full))
    else:
        cover = ("full length", real_inputs(1, s_full, a.h, a.dtype, seed + 1, scale))
    return [cover, ("random", _random_for_all(a, others, batch, seq, seed, scale)[0])]


def verify(
    a: Model,
    b: Model,
    batch: int = 4,
    seq: int | None = None,
    seed: int = 0,
    *,
    scale: float = 1.0,
    manifest: list | None = None,
    op: str | None = None,
    max_bytes: int = MAX_BATCH_BYTES,
) -> dict:
    """Compare ``forward(a, x)`` with ``forward(b, x)`` on inputs that exercise both models.

    Parameters
    ----------
    a, b : Model
        The original and the grown model (``b`` at least as wide as ``a``).
    batch, seq, seed : int
        The random sequences beside the covering set (:func:`input_sets`).
    scale : float
        Standard deviation of real-valued inputs (small values expose an un-rescaled norm
        epsilon, whose effect grows as the inputs shrink).
    manifest : list of Block, optional
        The manifest of the one expansion step that made ``b`` from ``a``: every block is
        audited bit for bit (:func:`fpt_ref.audit.audit_step`); ``op`` (required with it)
        names the expansion, whose proved constraint sets the blocks must include.
    max_bytes : int
        Memory budget of one batch's forward pass.

    Returns
    -------
    dict
        ``max_abs``, ``max_rel``, ``max_ulp`` (:func:`fpt_ref.tolerance.error_stats`), the
        preservation tolerance ``tol_abs`` and, in the unit of ``max_ulp``, ``tol_ulp``;
        ``inputs`` (what was run: the sets, their shapes, the token ids covered);
        ``audit`` (the :class:`fpt_ref.audit.AuditReport` as a dict, or ``None``); ``reason``
        (why ``b`` cannot compute ``a``'s function on all of ``a``'s inputs: a smaller
        vocabulary or ``s_max``; else ``None``); ``ok``: no such reason, ``max_abs <=
        tol_abs`` (both finite), and the audit, when there is one, passed.
    """
    st = verify_each(a, [b], batch, seq, seed, scale=scale, max_bytes=max_bytes)[0]
    st["audit"] = None
    if manifest is not None:
        from .audit import audit_step

        if op is None:
            raise ValueError("op: name the expansion the manifest records (one of fpt_ref.paper.NAMES)")
        rep = audit_step(a, b, manifest, op)
        st["audit"] = rep.to_dict()
        st["ok"] = bool(st["ok"] and rep.ok)
    return st


def verify_each(
    a: Model,
    others: list,
    batch: int = 4,
    seq: int | None = None,
    seed: int = 0,
    *,
    scale: float = 1.0,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list:
    """:func:`verify` (without the audit) of ``a`` against each model of ``others``, running ``a``
    once per batch.

    Per model, the figures are folded over every batch of every input set: the largest
    error, the largest reference output, the largest natural scale, and the longest sequence
    (the tolerance grows with it), so one tolerance covers every input.
    """
    others = list(others)
    sets = input_sets(a, others, batch, seq, seed, scale)
    widest = max([a] + others, key=lambda m: model_bytes(dims(m), np.dtype(m.dtype).itemsize))
    s_used = max(int(x.shape[1]) for _, x in sets)
    per_row = forward_bytes(dims(widest), 1, s_used, np.dtype(widest.dtype).itemsize)
    rows = max(1, int(max_bytes) // max(per_row, 1))
    require(2 * per_row, "one sequence of the check's forward pass")
    fold: list[_Fold] = [{"max_abs": 0.0, "ref": 0.0, "finite": True} for _ in others]
    scale_a = 0.0
    n_seq = 0
    for _, x in sets:
        for xa in batches(x, rows):
            tr = trace(a, xa)  # one pass over a: its output and what the tolerance scale needs
            ref = np.asarray(to_numpy(tr.output))  # [b, s, o]  = forward(a, xa)
            scale_a = max(scale_a, preservation_scale(a, tr))
            n_seq += int(xa.shape[0])
            for f, b, xb in zip(fold, others, _pad(xa, a, others)):
                st = error_stats(ref, forward(b, xb))
                f["finite"] &= bool(np.isfinite(st["max_abs"]))
                f["max_abs"] = max(f["max_abs"], st["max_abs"])
                f["ref"] = max(f["ref"], float(np.max(np.abs(ref))) if ref.size else 0.0)
    ulp_out = ulp(max(f["ref"] for f in fold), a.dtype)
    domain = [_domain_loss(a, b) for b in others]
    described = {name: list(x.shape) for name, x in sets}
    results = []
    for f, b, lost in zip(fold, others, domain):
        max_abs = f["max_abs"] if f["finite"] else float("inf")
        tol = tolerance_abs(a, b, s_used, scale_a)
        results.append(
            {
                "max_abs": max_abs,
                "max_rel": max_abs / f["ref"] if f["ref"] > 0 else (0.0 if max_abs == 0 else float("inf")),
                "max_ulp": max_abs / ulp(f["ref"], a.dtype),
                "tol_abs": tol,
                "tol_ulp": tol / ulp_out,
                # a non-finite error or scale (overflow) is never "preserved"
                "ok": bool(lost is None and np.isfinite(max_abs) and np.isfinite(tol) and max_abs <= tol),
                "reason": lost,
                "inputs": {
                    "sets": described,
                    "sequences": n_seq,
                    "tokens_covered": min(m.vocab for m in [a] + others) if a.embed is not None else None,
                    "batch_rows": rows,
                },
            }
        )
    return results

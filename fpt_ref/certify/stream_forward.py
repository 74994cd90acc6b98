"""The forward check of two checkpoint folders, a layer at a time (docs/certify.md section 7).

:func:`forward_folders` runs the forward pass of both folders' models (float64, or float32
where the stored scaled blocks are rounded in float32) on the same
random token sequences, reading one layer at a time (:class:`fpt_ref.hf.stream.Stream`), and
compares the outputs under the preservation tolerance of docs/tolerance.md, as
:func:`fpt_ref.verify` does in memory: the same layer function (:func:`fpt_ref.forward.block`),
the same nested magnitude streams for the tolerance's scale (folded a layer at a time,
:func:`fpt_ref.tolerance.magnitude_step`), the same bound ``(L(a, s) + L(b, s) + 4) ulp(S)``.

What differs from the in-memory check is the inputs: ``batch`` random sequences of ``seq``
tokens, not every token id (on a billion parameters, a forward over the whole vocabulary takes
hours on two CPU cores). The blocks certified are what makes the function preserved; this is
the numerical confirmation on a sample, and the certificate says which.

Memory: one layer of one model in float64 (and its magnitudes' absolute values), the
embedding rows of the sampled tokens, 64 MiB of the output matrix at a time, and the
activations ``[batch, seq, h]``; the base is run, then the grown one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..forward import _dense, block, final_normed
from ..tolerance import error_stats, first_magnitude, magnitude_step, output_magnitude, tolerance_abs, ulp

#: the default sample: sequences and their length (capped by both models' ``s_max``)
BATCH, SEQ = 2, 16
#: bytes of the output matrix read at a time (counted at 8 bytes a value)
CHUNK_BYTES = 64 * 2**20


def run_stream(stream, x) -> tuple:
    """The forward of ``stream``'s model on token ids ``x`` [b, s], a layer at a time, in the
    stream's working dtype (``stream.dtype``; the scale is computed in float64).

    Returns ``(output [b, s, o], S)``: the output and the preservation scale ``S`` of
    docs/tolerance.md on these inputs (:func:`fpt_ref.tolerance.natural_scale` of the last nested
    magnitude stream, folded a layer at a time). The model-wide tables are not held whole: the
    embedding rows of the tokens in ``x`` and the first ``s`` learned positions are read, and the
    output matrix is read :data:`CHUNK_BYTES` at a time (its stored rows, one per vocabulary entry).
    """
    sk = stream.skeleton
    dt = np.dtype(stream.dtype)
    x = np.asarray(x)
    if x.dtype.kind not in "iu" or x.ndim != 2:
        raise ValueError(f"x: token ids must be an integer array [b, s], got dtype {x.dtype} shape {list(x.shape)}")
    b, s = x.shape
    if s < 1 or s > sk.s_max:
        raise ValueError(f"x: sequence length {s} must be between 1 and s_max={sk.s_max}")
    small = {k: stream.model_tensor(k) for k in ("final_norm", "final_norm_b") if getattr(sk, k) is not None}
    top = dataclasses.replace(sk, **small)  # [h] gains; the tables stay placeholders
    ids, where = np.unique(x, return_inverse=True)  # [u] distinct ids, [b s] their places
    if ids.size and (ids[0] < 0 or ids[-1] >= sk.vocab):
        raise ValueError(f"x: token ids must lie in [0, {sk.vocab}), got range [{ids[0]}, {ids[-1]}]")
    rows = _rows(stream, "embed", ids)  # [u, h]
    inp = rows[where.reshape(b, s)]  # I [b, s, h]
    pos = None if sk.pos is None else _rows(stream, "pos", np.arange(s))  # [s, h] learned positions
    X = inp if pos is None else inp + pos  # X_1 [b, s, h]
    M = first_magnitude(sk, inp, pos)  # M_1 [b, s, h]
    for n in range(sk.N):
        layer = stream.layer(n)
        rec: list = []
        X_next = block(sk, layer, X, rec)  # X_{n+1} [b, s, h]
        M = magnitude_step(sk, layer, rec[0], M, nested=True)  # M_{n+1} [b, s, h]
        X = X_next
        del rec, layer
    stream.drop()
    Xf = final_normed(top, X)  # [b, s, h]
    Mf = output_magnitude(top, M, X)  # [b, s, h]  float64
    name = stream.kinds["w_out" if "w_out" in stream.kinds else "embed"]  # stored [o, h]: one row per output
    o, h = (int(d) for d in stream.tensors.shape(name))
    if (o, h) != (sk.o, sk.h):  # every family stores the output matrix as nn.Linear / nn.Embedding: [o, h]
        raise AssertionError(f"{name}: stored as {[o, h]}, expected [{sk.o}, {sk.h}]")
    out = np.empty((b, s, o), dtype=dt)  # [b, s, o]
    scale = 0.0
    step = max(1, CHUNK_BYTES // (8 * h))
    for lo in range(0, o, step):
        W = stream.tensors.read(name, dt, index=(slice(lo, lo + step),))  # [c, h]  rows lo.. of W_out^T
        out[..., lo : lo + W.shape[0]] = _dense(Xf, W.T)  # [b, s, c]
        scale = max(scale, float(np.max(Mf @ np.abs(W).T.astype(np.float64))))  # max |M_f| |W_out|, these columns
    return out, scale


def _rows(stream, kind: str, index):
    """Rows ``index`` of model-wide table ``kind`` (``embed``, ``pos``; stored [rows, h]) in the stream's dtype."""
    return stream.tensors.read(stream.kinds[kind], stream.dtype, index=(np.asarray(index),))


def forward_folders(
    base, grown, batch: int = BATCH, seq: int = SEQ, seed: int = 0, max_seq=None, dtype="float64"
) -> dict:
    """Compare the forward passes of checkpoint folders ``base`` and ``grown`` on ``batch`` random
    sequences of ``seq`` tokens (seed ``seed``), a layer at a time (module doc), in ``dtype``:
    float64, or float32 for folders whose scaled blocks are stored rounded in float32 (whose
    derived tolerance in float32 covers that rounding; in float64 it would not, as in
    :func:`fpt_ref.certify.certify`).

    Returns
    -------
    dict
        As :func:`fpt_ref.verify`: ``ok``, ``max_abs``, ``max_rel``, ``max_ulp``, ``tol_abs``,
        ``tol_ulp``, ``reason`` (why ``grown`` cannot compute ``base``'s function on all its
        inputs, or ``None``), ``dtype`` and ``inputs`` (``sets``: the shape of the
        sample; ``sampled``: true; ``tokens_covered``: the distinct token ids in the sample).

    Raises
    ------
    ValueError
        ``models:`` when the two cannot be compared (different output sizes), ``batch:`` or
        ``seq:`` below 1, and the reader's errors (``path:``, ``config:``).
    """
    from ..checks import check_int
    from ..hf.stream import Stream
    from ..init import random_inputs
    from ..verify import _check_models, _domain_loss

    batch = check_int("batch", batch, 1)
    seq = check_int("seq", seq, 1)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype: the forward check runs in float32 or float64, got {dt}")
    rb, rg = Stream(base, dtype=dt, max_seq=max_seq), Stream(grown, dtype=dt, max_seq=max_seq)
    a, b = rb.skeleton, rg.skeleton
    _check_models(a, [b])
    s = min(seq, a.s_max, b.s_max)
    x = random_inputs(min([a, b], key=lambda m: m.vocab), batch, s, seed)  # [batch, s] token ids both take
    ref, scale = run_stream(rb, x)  # [b, s, o]; S: the base's preservation scale on these inputs
    out = run_stream(rg, x)[0]  # [b, s, o]
    st = error_stats(ref, out)
    tol = tolerance_abs(a, b, s, scale)
    lost = _domain_loss(a, b)
    peak = float(np.max(np.abs(ref))) if ref.size else 0.0
    return {
        "ok": bool(lost is None and np.isfinite(st["max_abs"]) and np.isfinite(tol) and st["max_abs"] <= tol),
        "max_abs": st["max_abs"],
        "max_rel": st["max_rel"],
        "max_ulp": st["max_ulp"],
        "tol_abs": tol,
        "tol_ulp": tol / ulp(peak, dt),
        "reason": lost,
        "dtype": dt.name,
        "inputs": {"sets": {"random": [batch, s]}, "sampled": True, "tokens_covered": int(np.unique(x).size)},
    }

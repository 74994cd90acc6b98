"""The forward check of two checkpoint folders, a layer at a time (docs/certify.md section 7).

:func:`forward_folders` runs the float64 forward pass of both folders' models on the same
random token sequences, reading one layer at a time (:class:`fpt_ref.hf.stream.Stream`), and
compares the outputs under the preservation tolerance of docs/tolerance.md, as
:func:`fpt_ref.verify` does in memory: the same layer function (:func:`fpt_ref.forward.block`),
the same nested magnitude streams for the tolerance's scale (folded a layer at a time,
:func:`fpt_ref.tolerance.magnitude_step`), the same bound ``(L(a, s) + L(b, s) + 4) ulp(S)``.

What differs from the in-memory check is the inputs: ``batch`` random sequences of ``seq``
tokens, not every token id (on a billion parameters, a forward over the whole vocabulary takes
hours on two CPU cores). The blocks certified are what makes the function preserved; this is
the numerical confirmation on a sample, and the certificate says which.

Memory: the model-wide tables of one model in float64 (the embedding and output matrices),
one layer of it, and the activations ``[batch, seq, h]``; the base is run, then the grown one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..forward import _first_stream, block, input_rows, output
from ..names import MODEL_KINDS
from ..tolerance import error_stats, first_magnitude, magnitude_step, natural_scale, tolerance_abs, ulp

#: the default sample: sequences and their length (capped by both models' ``s_max``)
BATCH, SEQ = 2, 16


def run_stream(stream, x) -> tuple:
    """The float64 forward of ``stream``'s model on token ids ``x`` [b, s], a layer at a time.

    Returns ``(output [b, s, o], M [b, s, h], X [b, s, h], top)``: the output, the last nested
    magnitude stream ``M_{N+1}`` and residual stream ``X_{N+1}`` (for the tolerance's scale), and
    the skeleton with the model-wide tensors read (``top``; its layers stay placeholders).
    """
    sk = stream.skeleton
    top = dataclasses.replace(sk, **{k: stream.model_tensor(k) for k in MODEL_KINDS if getattr(sk, k) is not None})
    inp = input_rows(top, x)  # [b, s, h]  validates the token ids
    X = _first_stream(top, inp)  # X_1 [b, s, h]
    M = first_magnitude(top, inp, top.pos)  # M_1 [b, s, h]
    for n in range(sk.N):
        layer = stream.layer(n)
        rec: list = []
        X_next = block(sk, layer, X, rec)  # X_{n+1} [b, s, h]
        M = magnitude_step(sk, layer, rec[0], M, nested=True)  # M_{n+1} [b, s, h]
        X = X_next
        del rec
    stream.drop()
    return output(top, X), M, X, top


def forward_folders(base, grown, batch: int = BATCH, seq: int = SEQ, seed: int = 0, max_seq=None) -> dict:
    """Compare the float64 forward passes of checkpoint folders ``base`` and ``grown`` on ``batch``
    random sequences of ``seq`` tokens (seed ``seed``), a layer at a time (module doc).

    Returns
    -------
    dict
        As :func:`fpt_ref.verify`: ``ok``, ``max_abs``, ``max_rel``, ``max_ulp``, ``tol_abs``,
        ``tol_ulp``, ``reason`` (why ``grown`` cannot compute ``base``'s function on all its
        inputs, or ``None``), ``dtype`` (``"float64"``) and ``inputs`` (``sets``: the shape of the
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
    rb, rg = Stream(base, dtype="float64", max_seq=max_seq), Stream(grown, dtype="float64", max_seq=max_seq)
    a, b = rb.skeleton, rg.skeleton
    _check_models(a, [b])
    s = min(seq, a.s_max, b.s_max)
    x = random_inputs(min([a, b], key=lambda m: m.vocab), batch, s, seed)  # [batch, s] token ids both take
    ref, M, X, top = run_stream(rb, x)  # [b, s, o]
    scale = natural_scale(top, M, X)  # S: the base's preservation scale on these inputs
    del M, X, top
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
        "tol_ulp": tol / ulp(peak, np.float64),
        "reason": lost,
        "dtype": "float64",
        "inputs": {"sets": {"random": [batch, s]}, "sampled": True, "tokens_covered": int(np.unique(x).size)},
    }

"""Tie the symbolic models to fpt_ref (issue 3, section 5).

``to_fpt`` turns a symbolic model and numbers for its symbols into an ``fpt_ref.Model`` and
an input array, so the symbolic forward pass can be compared with ``fpt_ref.forward``.
``values_from_fpt`` reads the values of a symbolic expanded model's new symbols out of a
model expanded by fpt_ref, position by position, so the symbolic expansions can be
compared with fpt_ref's expansion functions tensor by tensor.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .entries import _np
from .symbolic import SModel, tensors


def to_fpt(m: SModel, values: dict):
    """``(fpt_ref.Model, I)``: the model at ``values`` (float64) and its input [s, h]."""
    from fpt_ref.model import Head, Layer, Model

    layers = tuple(
        Layer(
            norm_mha=_np(L.norm_mha, values)[0],  # [h]
            heads=tuple(
                Head(_np(H.w_q, values), _np(H.w_k, values), _np(H.w_v, values), _np(H.w_o, values)) for H in L.heads
            ),
            norm_mlp=_np(L.norm_mlp, values)[0],  # [h]
            w_l1=_np(L.w_l1, values),
            b_l1=_np(L.b_l1, values)[0],  # [h, p], [p]
            w_l2=_np(L.w_l2, values),
            b_l2=_np(L.b_l2, values)[0],
        )  # [p, h], [h]
        for L in m.layers
    )
    eps = float(sp.sympify(m.eps).xreplace(values))
    model = Model(
        embed=None, pos=_np(m.pos, values), w_out=_np(m.w_out, values), layers=layers, norm_eps=eps, causal=m.causal
    )
    return model, _np(m.inp, values)  # [s, h]


def values_from_fpt(sym: SModel, fpt_model, known: dict) -> dict:
    """Values for the bare symbols of ``sym``'s tensors not in ``known``, read at the same
    position of the same tensor of ``fpt_model`` (fpt_ref's file-format names)."""
    from fpt_ref.model import named_tensors

    arrays = named_tensors(fpt_model)
    out = dict(known)
    for name, M in tensors(sym).items():
        if name == "I":
            continue
        arr = np.asarray(arrays[name])
        arr = arr.reshape(M.shape)  # biases and gains are rows [1, n] here, vectors [n] there
        for i in range(M.rows):
            for j in range(M.cols):
                e = M[i, j]
                if e.is_Symbol and e not in out:
                    out[e] = float(arr[i, j])
    return out


def tensor_mismatches(sym: SModel, fpt_model, values: dict, rel: float) -> list:
    """Names of tensors whose symbolic entries at ``values`` differ from fpt_ref's by more than
    ``rel`` relative to the tensor's largest entry (zero blocks must match exactly)."""
    from fpt_ref.model import named_tensors

    arrays = named_tensors(fpt_model)
    bad = []
    for name, M in tensors(sym).items():
        if name == "I":
            continue
        ours = _np(M, values)
        theirs = np.asarray(arrays[name]).reshape(M.shape)
        zero = np.array([[M[i, j] == 0 for j in range(M.cols)] for i in range(M.rows)])
        scale = max(1.0, float(np.max(np.abs(theirs))))
        if np.any(theirs[zero] != 0) or np.max(np.abs(ours - theirs)) > rel * scale:
            bad.append(name)
    return bad


def compare_forward(m: SModel, values: dict) -> tuple[float, int]:
    """``(max ulps, tolerance)``: the symbolic model at ``values`` (40 digits, through the very
    stand-in expressions the proofs reduce) against ``fpt_ref.forward`` on the same numbers.

    The symbolic value is exact far below float64 resolution, so the difference is
    fpt_ref's rounding alone, which ``fpt_ref.tolerance`` bounds by ``reduction_length(model, s)``
    ulps of the output scale; one more ulp covers rounding the exact value to float64.
    """
    from fpt_ref.forward import forward as fpt_forward
    from fpt_ref.tolerance import error_stats, reduction_length

    from .symbolic import Kernel, forward

    K = Kernel("relu")
    y = K.numeric_matrix(forward(m, K), values)  # [s, o], exact to 40 digits
    exact = np.array([[float(y[i, j]) for j in range(y.cols)] for i in range(y.rows)])  # [s, o]
    model, inp = to_fpt(m, values)
    got = fpt_forward(model, inp)  # [s, o]
    return float(error_stats(exact, got)["max_ulp"]), reduction_length(model, m.s) + 1


def crosscheck_theorem(theorem: str, sizes: dict, seed: int = 11):
    """One claim: the theorem's base and expanded models (paper constraints, with and without
    the causal mask) at seeded random numbers agree with ``fpt_ref.forward`` within tolerance.

    fpt_ref implements ReLU only, so the symbolic models run with ReLU here.
    """
    import time

    from .entries import positive_fix, random_values
    from .symbolic import model_symbols
    from .theorems import Level, build_entries

    t = time.perf_counter()
    worst, tol_of_worst, n = 0.0, 0, 0
    ok = True
    zero, scale = _paper(theorem)
    for causal in (False, True):
        base, expanded, _ = build_entries(theorem, sizes, zero, scale, causal)
        for m in (base, expanded):
            syms = model_symbols(m)
            vals = random_values(syms, seed=seed, fixed=positive_fix(syms))
            ulp, tol = compare_forward(m, vals)
            ok = ok and ulp <= tol
            n += 1
            if ulp >= worst:
                worst, tol_of_worst = ulp, tol
    status = "proved" if ok else "refuted"
    detail = (
        f"{n} models (base, expanded; with and without the causal mask) at random numbers (seed {seed}) vs "
        f"fpt_ref.forward: max {worst:.0f} ulp (tolerance {tol_of_worst} ulp, fpt_ref.tolerance.reduction_length + 1)"
    )
    return Level(
        theorem,
        "crosscheck",
        status,
        time.perf_counter() - t,
        detail,
        zero,
        scale,
        variant="relu",
        sizes=dict(sizes),
        label="cross-check fpt_ref.forward",
    )


def _paper(theorem: str):
    from .theorems import THEOREMS

    return THEOREMS[theorem].paper


def to_fpt_arch(m: SModel, values: dict, arch):
    """``(fpt_ref.Model, I)``: a symbolic model with the blocks of ``arch`` (docs/spec.md 4.1) at
    ``values``, as an fpt_ref model fed real inputs ``I`` [s, h].

    The symbolic model reads real-valued inputs, so a tied output becomes the untied matrix of
    the same numbers (``W_out = embed^T`` evaluated); RoPE's base is evaluated from ``m.rope``
    (an expanded model's ``theta^(k^/k)`` included); a grouped layer's key/value heads are
    shared by its query heads, as fpt_ref stores them.
    """
    from fpt_ref.model import Head, Layer, Model

    def row(M):  # [1, n] -> [n], or None
        return None if M is None else _np(M, values)[0]

    def mat(M):
        return None if M is None else _np(M, values)

    layers = []
    for L in m.layers:
        kv = None
        if L.kv is not None:
            kv = [(mat(G.w_k), row(G.b_k), mat(G.w_v), row(G.b_v)) for G in L.kv]
        heads = []
        for j, H in enumerate(L.heads):
            if kv is None:
                w_k, b_k, w_v, b_v = mat(H.w_k), row(H.b_k), mat(H.w_v), row(H.b_v)
            else:
                w_k, b_k, w_v, b_v = kv[j // (len(L.heads) // len(kv))]
            heads.append(Head(mat(H.w_q), w_k, w_v, mat(H.w_o), row(H.b_q), b_k, b_v))
        layers.append(
            Layer(
                norm_mha=row(L.norm_mha),
                heads=tuple(heads),
                norm_mlp=row(L.norm_mlp),
                w_l1=mat(L.w_l1),
                b_l1=row(L.b_l1),
                w_l2=mat(L.w_l2),
                b_l2=row(L.b_l2),
                w_gate=mat(L.w_gate),
                b_gate=row(L.b_gate),
                b_o=row(L.b_o),
                norm_mha_b=row(L.norm_mha_b),
                norm_mlp_b=row(L.norm_mlp_b),
                kv_heads=None if kv is None else len(kv),
            )
        )
    changes = {"tied": False}
    if m.rope is not None:
        changes["rope_theta"] = float(sp.sympify(m.rope[0]).xreplace(values))
    model = Model(
        embed=None,
        pos=mat(m.pos) if arch.positions == "learned" else None,
        w_out=mat(m.w_out),
        layers=tuple(layers),
        norm_eps=float(sp.sympify(m.eps).xreplace(values)),
        causal=m.causal,
        arch=arch.replace(**changes),
        final_norm=row(m.final_norm),
        final_norm_b=row(m.final_norm_b),
        max_seq=None if arch.positions == "learned" else m.s,
    )
    return model, _np(m.inp, values)  # [s, h]


def compare_forward_arch(m: SModel, values: dict, arch) -> tuple[float, float]:
    """``(max ulps, tolerance in ulps)``: the symbolic model with the blocks of ``arch`` at
    ``values`` (40 digits, through the stand-ins the proofs reduce) against ``fpt_ref.forward``.

    Both in ulps of the output scale ``max |output|``; the tolerance is fpt_ref's derived
    preservation bound for one model (``fpt_ref.tolerance``: the reduction lengths of the
    blocks of ``arch`` times ulp of the nested natural scale), plus one ulp for rounding the
    exact value to float64.
    """
    from fpt_ref.forward import forward as fpt_forward
    from fpt_ref.forward import trace
    from fpt_ref.tolerance import error_stats, preservation_scale, reduction_length, ulp

    from .symbolic import Kernel, forward

    K = Kernel(arch.act)
    y = K.numeric_matrix(forward(m, K), values)  # [s, o], exact to 40 digits
    exact = np.array([[float(y[i, j]) for j in range(y.cols)] for i in range(y.rows)])  # [s, o]
    model, inp = to_fpt_arch(m, values, arch)
    got = fpt_forward(model, inp)  # [s, o]
    scale = preservation_scale(model, trace(model, inp))
    tol_abs = (reduction_length(model, m.s) + 1) * ulp(scale, np.float64)
    out_ulp = ulp(float(np.max(np.abs(exact))), np.float64)
    return float(error_stats(exact, got)["max_ulp"]), tol_abs / out_ulp

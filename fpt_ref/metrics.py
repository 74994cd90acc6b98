"""Preservation error and its derived tolerance.

Error measures (``ref`` is the reference output, ``out`` the one compared with it):

- ``max_abs = max |out - ref|``
- ``max_rel = max |out - ref| / max |ref|``          (normwise: relative to the output scale)
- ``max_ulp = max |out - ref| / ulp(max |ref|)``     ulps of the output scale, where
  ``ulp(x) = numpy.spacing(x)`` in the compared dtype (so ``max_ulp`` is dtype-aware)

Tolerance (documented in the README, "Tolerance"). Standard forward error analysis bounds
a computed dot product ``x . w`` of length ``n`` by ``gamma_n |x| . |w|`` with
``gamma_n = n u / (1 - n u)`` (Higham, *Accuracy and Stability of Numerical Algorithms*,
ch. 3): the error scales with the sum of absolute products, not with the result, which
cancellation can make arbitrarily small. Hence the *natural output scale*

    S = max over entries of M_{N+1} @ |W_out|      (>= max |Output|)

of the reference model on the same inputs, where ``M_{N+1} >= |X_{N+1}|`` is the running
magnitude of the terms the last residual stream sums (:func:`magnitude_streams`): residual
additions cancel too, and their rounding error scales with ``M``, not with ``X``. Along one path through the model the reductions
are: the norm's mean (``h``), the Q/K/V matmul (``h``), the logits (``k``), the softmax sum
(``s``), the weighted sum of values (``s``), the output projection (sum of the layer's
``v_e``), the second norm (``h``), ``W_l1`` (``h``) and ``W_l2`` (``p``) per layer, and
``W_out`` (``h``). Their total ``L(model, s)`` bounds the rounding error of one forward pass,
in units of ``ulp(S)``, for a model whose nonlinearities do not amplify errors by more than
O(1) (checked empirically by the property tests over thousands of random models). Two models
computing the same exact function therefore agree to

    tol_abs = (L(a, s) + L(b, s) + 4) * ulp(S)

the ``+ 4`` covering the rounding of the ``sqrt`` scalings applied when expanding. Reported
in the same unit as ``max_ulp`` this is ``tol_ulp = tol_abs / ulp(max |ref|)``.
"""

from __future__ import annotations

import numpy as np

from .model import Model
from .xp import to_numpy


def reduction_length(model: Model, s: int) -> int:
    """``L(model, s)``: total reduction length along one path of the forward pass."""
    total = model.h  # W_out
    for layer in model.layers:
        k_max = max(hd.k for hd in layer.heads)
        sum_v = sum(hd.v for hd in layer.heads)
        total += 4 * model.h + k_max + 2 * s + sum_v + layer.p
    return total


def tolerance_ulps(a: Model, b: Model, s: int) -> float:
    """``L(a, s) + L(b, s) + 4``: the derived bound in ulps of the natural output scale ``S``."""
    return float(reduction_length(a, s) + reduction_length(b, s) + 4)


def natural_scale(model: Model, last_stream) -> float:
    """``max |X| @ |W_out|`` for a last residual stream ``X`` [..., s, h] of ``model``.

    Given the magnitude stream ``M_{N+1}`` of :func:`magnitude_streams` (``>= |X_{N+1}|``)
    this is the natural output scale ``S`` of the module doc.
    """
    xp = model.xp
    if not last_stream.size:
        return 0.0
    f64 = xp.float64  # in float64, so that a float32 model's scale cannot overflow
    return float(xp.max(xp.abs(last_stream).astype(f64) @ xp.abs(model.w_out).astype(f64)))


def streams_and_magnitudes(model: Model, x) -> tuple:
    """Running magnitudes ``M_1 .. M_{N+1}`` [b, s, h] bounding the terms each residual sums.

    A residual stream is a sum of terms (input, positions, every branch output); its rounding
    error is bounded relative to the sum of their absolute values, not to the stream itself,
    which cancellation can make small. So, with ``Xn = Norm(X)`` from the actual streams:

        M_1   = |I| + |P|
        M'_n  = M_n  + max_s(|Xn| @ |W_V|) @ |W_O|           (|softmax V| <= max over rows of |V|)
        M_n+1 = M'_n + (|Xn'| @ |W_l1| + |b_l1|) @ |W_l2| + |b_l2|

    ``x`` as for :func:`fpt_ref.forward` (batched or not). Returns ``(X_{N+1}, [M_1 .. M_{N+1}])``:
    the last residual stream comes along at no cost (``X_{N+1} @ W_out`` is the model's output,
    bit for bit), so a caller needing both runs the model once.
    """
    from .forward import _batched, embed_inputs, mha, mlp, rms_norm  # the forward's own pieces

    xp = model.xp
    xb, unbatched = _batched(model, x)
    X = embed_inputs(model, xb)  # X_1 [b, s, h]
    inp = X - model.pos[: X.shape[1]]  # I [b, s, h]
    M = xp.abs(inp) + xp.abs(model.pos[: X.shape[1]])  # M_1 [b, s, h]
    out = [M]
    for L in model.layers:
        xn = rms_norm(X, L.norm_mha, model.norm_eps)  # [b, s, h]
        w_v = xp.concatenate([hd.w_v for hd in L.heads], axis=1)  # [h, sum v]
        w_o = xp.concatenate([hd.w_o for hd in L.heads], axis=0)  # [sum v, h]
        v_max = xp.max(xp.abs(xn) @ xp.abs(w_v), axis=-2, keepdims=True)  # [b, 1, sum v]
        M = M + v_max @ xp.abs(w_o)  # M'_n [b, s, h]
        X = X + mha(L, xn, model.causal)  # X'_n [b, s, h]
        xn = rms_norm(X, L.norm_mlp, model.norm_eps)  # [b, s, h]
        M = M + (xp.abs(xn) @ xp.abs(L.w_l1) + xp.abs(L.b_l1)) @ xp.abs(L.w_l2) + xp.abs(L.b_l2)  # M_{n+1}
        X = X + mlp(L, xn)  # X_{n+1} [b, s, h]
        out.append(M)
    return (X[0], [m[0] for m in out]) if unbatched else (X, out)


def magnitude_streams(model: Model, x) -> list:
    """The running magnitudes ``[M_1 .. M_{N+1}]`` of :func:`streams_and_magnitudes`."""
    return streams_and_magnitudes(model, x)[1]


def tolerance_abs(a: Model, b: Model, s: int, scale: float) -> float:
    """``tol_abs = tolerance_ulps(a, b, s) * ulp(S)`` in the dtype of ``a`` (module doc)."""
    return tolerance_ulps(a, b, s) * float(np.spacing(np.dtype(a.dtype).type(scale)))


def error_stats(ref, out) -> dict:
    """``max_abs``, ``max_rel``, ``max_ulp`` of ``out`` against ``ref`` (same shape and dtype).

    NaN or inf anywhere gives ``inf`` for all three.
    """
    ref = np.asarray(to_numpy(ref))
    out = np.asarray(to_numpy(out))
    if ref.shape != out.shape:
        raise ValueError(f"shapes differ: reference {list(ref.shape)} vs compared {list(out.shape)}")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(out))):
        return {"max_abs": float("inf"), "max_rel": float("inf"), "max_ulp": float("inf")}
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    ulp = float(np.spacing(ref.dtype.type(scale))) if scale > 0 else float(np.finfo(ref.dtype).tiny)
    return {
        "max_abs": diff,
        "max_rel": diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")),
        "max_ulp": diff / ulp,
    }

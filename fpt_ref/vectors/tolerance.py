"""Tolerance policy for comparing another implementation with the reference vectors.

A tensor ``T`` (``residual.{n}`` or ``output``) computed by another implementation in
dtype ``d`` passes when, element by element,

    |actual - ref| <= atol_T + rtol_T * |ref|
    rtol_T = L_T * (u_d + u_64)
    atol_T = rtol_T * S_T

where ``u_d = eps(d) / 2`` is the unit roundoff of ``d`` (``u_64`` that of the float64
reference, whose own rounding is part of the difference), ``L_T`` the number of rounding
steps on one path from the stored float64 inputs to ``T`` and ``S_T`` the *natural scale*
of ``T``: the largest sum of absolute values of the summands that make up an entry of ``T``.

Derivation (standard forward error analysis, Higham, *Accuracy and Stability of Numerical
Algorithms*, ch. 3): a computed sum or dot product of length ``n`` is within
``gamma_n ~ n u`` times the sum of the absolute values of its terms, which cancellation
can make much larger than the result; hence ``S_T`` and not ``|T|`` (the absolute term),
while the relative term covers entries as large as ``S_T``. Lengths:

- ``L(residual.0) = C_IN``: rounding ``I`` and ``P`` to ``d``, and ``I + P``;
- ``L(residual.n) = L(residual.{n-1}) + R_{n-1} + C_LAYER``, ``R`` being one layer's
  reductions as counted by :func:`fpt_ref.metrics.reduction_length` (the norms' means
  ``2h``, Q/K/V ``h``, logits ``k_max``, softmax sum and weighted sum ``2s``, ``W_O``
  ``sum v_e``, ``W_l1`` ``h``, ``W_l2`` ``p``) and ``C_LAYER`` its elementwise roundings;
- ``L(output) = L(residual.N) + h + C_OUT`` (``W_out``).

Natural scales (:func:`natural_scales`, from the float64 reference): running sums ``M`` of
the absolute values of every term a residual stream has summed so far (``|I|``, ``|P|``,
then per layer the absolute summands ``|H_e| |W_O,e|`` of the attention output and
``|ReLU(a)| |W_l2| + |b_l2|`` of the MLP output), so that cancellation in a residual
addition or in ``W_out`` does not shrink the bound; ``S(residual.n) = max M_{n+1}``,
``S(output) = max M_{N+1} |W_out|``. Unlike :func:`fpt_ref.metrics.magnitude_streams` (the
scale of ``fpt-ref verify``), the inner products (``|Norm(X)| |W_V|``, ``|Norm(X')| |W_l1|``)
are not nested into ``M``: inner errors are taken relative to the inner results. Nesting
makes the float32 output tolerance about 1% of the output on the ``small`` cases, too loose
to catch real bugs (docs/vectors.md).

Errors from earlier layers are assumed to pass through later ones with gain O(1); this and
the whole bound are validated empirically (docs/vectors.md, "Tolerance policy").
"""

from __future__ import annotations

import numpy as np

from ..forward import attention, rms_norm
from ..metrics import natural_scale, reduction_length
from ..model import Model

#: rounding steps before layer 0: I and P rounded to the compared dtype, and I + P.
C_IN = 3
#: elementwise roundings of one layer, beyond its reductions: per norm x^2, + eps, sqrt,
#: divide, gain (5, twice: 10); logit scaling, max subtraction, exp, softmax divide (4);
#: two bias additions and two residual additions (4); rounding the layer's ten parameter
#: tensors W_Q, W_K, W_V, W_O, W_l1, W_l2, b_l1, b_l2 and both g to the compared dtype (10).
C_LAYER = 28
#: rounding W_out to the compared dtype.
C_OUT = 1

#: dtypes an implementation may be compared in.
DTYPES = ("float32", "float64")


def unit_roundoff(dtype) -> float:
    """``u = eps / 2`` of a floating dtype (2**-24 for float32, 2**-53 for float64)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def path_lengths(model: Model, s: int) -> dict:
    """``L_T`` for ``residual.0 .. residual.N`` and ``output`` (module doc).

    Parameters
    ----------
    model : Model
    s : int
        Sequence length of the inputs.

    Returns
    -------
    dict name -> int
    """
    out = {}
    for n in range(model.N + 1):
        # reduction_length counts W_out (h) plus the first n layers' reductions
        first_n = model.replace(layers=model.layers[:n])
        out[f"residual.{n}"] = C_IN + reduction_length(first_n, s) - model.h + n * C_LAYER
    out["output"] = C_IN + reduction_length(model, s) + model.N * C_LAYER + C_OUT
    return out


def natural_scales(model: Model, x) -> dict:
    """``S_T`` of ``residual.0 .. residual.N`` and ``output`` (module doc), float64.

    Running sums of the absolute values of every term a residual stream has summed:
    ``M_1 = |I| + |P|``, ``M'_n = M_n + sum_e |H_e| |W_O,e|``,
    ``M_{n+1} = M'_n + |ReLU(a)| |W_l2| + |b_l2|``; ``S(residual.n) = max M_{n+1}`` and
    ``S(output) = max M_{N+1} |W_out|`` (:func:`fpt_ref.metrics.natural_scale`).

    Parameters
    ----------
    model : Model
    x : token ids [b, s] or real inputs [b, s, h]
    """
    xp = model.xp
    x = xp.asarray(x)
    s = x.shape[1]
    inp = model.embed[x] if model.embed is not None else x.astype(model.dtype)  # I [b, s, h]
    X = inp + model.pos[:s]  # X_1 [b, s, h]
    M = xp.abs(inp) + xp.abs(model.pos[:s])  # M_1 [b, s, h]
    out = {"residual.0": float(xp.max(M))}
    for n, L in enumerate(model.layers):
        a = rms_norm(X, L.norm_mha, model.norm_eps)  # [b, s, h]
        for hd in L.heads:
            q, k, v = (a @ hd.w_q)[:, None], (a @ hd.w_k)[:, None], (a @ hd.w_v)[:, None]  # [b, 1, s, k|v]
            H = attention(q, k, v, model.causal)[:, 0]  # H_e [b, s, v]
            X = X + H @ hd.w_o  # [b, s, h]
            M = M + xp.abs(H) @ xp.abs(hd.w_o)  # [b, s, h]
        act = xp.maximum(rms_norm(X, L.norm_mlp, model.norm_eps) @ L.w_l1 + L.b_l1, 0)  # ReLU(a) [b, s, p]
        X = X + act @ L.w_l2 + L.b_l2  # X_{n+1} [b, s, h]
        M = M + xp.abs(act) @ xp.abs(L.w_l2) + xp.abs(L.b_l2)  # M_{n+1} [b, s, h]
        out[f"residual.{n + 1}"] = float(xp.max(M))
    out["output"] = natural_scale(model, M)
    return out


def tolerances(model: Model, x, reference: dict) -> dict:
    """Per-dtype, per-tensor ``atol``/``rtol`` for the case ``(model, x)`` (module doc).

    Parameters
    ----------
    model : Model
    x : token ids [b, s] or real inputs [b, s, h]
    reference : dict name -> float64 array
        ``output`` [b, s, o] and ``residual.{n}`` [b, s, h] (only the names are used).

    Returns
    -------
    dict dtype -> name -> {"L", "scale", "rtol", "atol"}
    """
    lengths = path_lengths(model, int(x.shape[1]))
    missing = sorted(set(lengths) - set(reference))
    if missing:
        raise ValueError(f"reference: missing tensors {missing}")
    scales = natural_scales(model, x)
    out = {}
    for dt in DTYPES:
        u = unit_roundoff(dt) + unit_roundoff(np.float64)
        out[dt] = {
            name: {"L": int(L), "scale": scales[name], "rtol": L * u, "atol": L * u * scales[name]}
            for name, L in lengths.items()
        }
    return out


def excess(ref, actual, atol: float, rtol: float):
    """``|actual - ref| / (atol + rtol |ref|)`` elementwise (pass where <= 1); float64 arrays."""
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.abs(np.asarray(actual, dtype=np.float64) - ref)  # same shape as ref
    bound = atol + rtol * np.abs(ref)  # same shape as ref
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diff == 0, 0.0, diff / bound)


def top2_gap(output):
    """Gap between the largest and second largest entry along the last axis.

    output: [..., o] -> [...] (``inf`` where ``o == 1``)
    """
    out = np.asarray(output, dtype=np.float64)
    if out.shape[-1] < 2:
        return np.full(out.shape[:-1], np.inf)
    top = np.sort(out, axis=-1)[..., -2:]  # [..., 2]
    return top[..., 1] - top[..., 0]


def decidable(output, atol: float, rtol: float):
    """Positions where the argmax of ``output`` [..., o] cannot flip within the tolerance.

    An implementation within tolerance may move the top two entries ``a >= b`` towards each
    other by at most ``atol + rtol |a|`` and ``atol + rtol |b|``; the argmax is decidable where
    the gap ``a - b`` exceeds their sum. Returns a bool array [...].
    """
    out = np.asarray(output, dtype=np.float64)
    if out.shape[-1] < 2:
        return np.ones(out.shape[:-1], dtype=bool)
    top = np.sort(out, axis=-1)[..., -2:]  # [..., 2]
    slack = 2 * atol + rtol * (np.abs(top[..., 0]) + np.abs(top[..., 1]))  # [...]
    return (top[..., 1] - top[..., 0]) > slack

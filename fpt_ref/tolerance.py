"""How far apart two computations of one function are, and how far rounding lets them be.

Everything here is derived once in docs/tolerance.md; this docstring is a map.

Error measures (:func:`error_stats`), ``ref`` the reference, ``out`` the compared tensor:
``max_abs = max |out - ref|``, ``max_rel = max_abs / max |ref|`` and
``max_ulp = max_abs / ulp(max |ref|)``, with :func:`ulp` the spacing of floats in a dtype.

Shared parts of both policies:

- :func:`unit_roundoff` ``u`` and :func:`ulp`, the one unit and the one ulp helper
  (``u S < ulp(S) <= 2 u S`` for a normal ``S``);
- :func:`layer_reductions` ``R_n``, the reduction lengths of one layer on one path; the
  rounding error of a sum of ``n`` terms is at most about ``n u`` times the sum of the
  terms' absolute values (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3);
- :func:`magnitudes`, running sums ``M`` of the absolute values of the terms each residual
  stream has summed, folded over a :func:`fpt_ref.forward.trace`, and :func:`natural_scale`:
  the *natural scale* of a tensor is the largest sum of the absolute values of the summands
  of one of its entries, ``max M`` for a residual stream and ``max M_{N+1} |W_out|`` for
  the output.

Two policies answer two questions:

- **Preservation** (``fpt-ref verify``): do models ``a`` and ``b``, in the same dtype,
  compute the same function? ``|out_b - out_a| <= tol_abs`` with
  ``tol_abs = (L(a, s) + L(b, s) + 4) ulp(S)`` (:func:`tolerance_abs`), ``L`` the
  :func:`reduction_length`, ``S`` the natural output scale of ``a`` with *nested* magnitudes
  (inner products bounded too; :func:`preservation_scale`).
- **Agreement** (``fpt-ref compare``): does another implementation compute each tensor ``T``
  of the float64 reference to the precision of its dtype ``d``? Elementwise
  ``|actual - ref| <= atol_T + rtol_T |ref|``, ``rtol_T = L_T (u_d + u_64)``,
  ``atol_T = rtol_T S_T`` (:func:`tolerances`), ``L_T`` the :func:`path_lengths` (reductions
  and elementwise roundings), ``S_T`` natural scales with magnitudes *not nested*
  (:func:`natural_scales`).
"""

from __future__ import annotations

import numpy as np

from .blocks import Arch
from .forward import trace
from .model import Layer, Model
from .names import residual_name
from .xp import to_numpy

#: dtypes an implementation may be compared in (agreement policy).
DTYPES = ("float32", "float64")
#: preservation: the roundings of the ``sqrt`` scalings applied when expanding.
C_SCALINGS = 4
#: agreement, rounding steps before layer 0: I and P rounded to the compared dtype, and I + P.
C_IN = 3
#: agreement, elementwise roundings of one layer beyond its reductions: per norm x^2, + eps,
#: sqrt, divide, gain (5, twice: 10); logit scaling, max subtraction, exp, softmax divide (4);
#: two bias additions and two residual additions (4); rounding the layer's ten parameter
#: tensors W_Q, W_K, W_V, W_O, W_l1, W_l2, b_l1, b_l2 and both g to the compared dtype (10).
C_LAYER = 28
#: agreement: rounding W_out to the compared dtype.
C_OUT = 1
#: roundings of one bias addition (and the bias rounded to the compared dtype)
C_BIAS = 2
#: ulps of evaluating GELU (erf), its tanh form or SiLU elementwise
C_ACT = 4
#: RoPE: cos and sin rounded, two products and one sum per rotated entry
C_ROPE = 4


# ---- units -------------------------------------------------------------------------------


def unit_roundoff(dtype) -> float:
    """``u = eps / 2`` of a floating dtype (2**-24 for float32, 2**-53 for float64)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def ulp(x: float, dtype) -> float:
    """Spacing of ``dtype`` floats at ``|x|`` (``numpy.spacing``); at 0 the smallest normal.

    For a normal ``x``, ``u |x| < ulp(x) <= 2 u |x|`` (:func:`unit_roundoff`).
    """
    dt = np.dtype(dtype)
    return float(np.spacing(dt.type(abs(x)))) if x != 0 else float(np.finfo(dt).tiny)


def scaling_rounding(arr, scaled, factor: float) -> float:
    """Max ulps (of ``scaled``'s dtype) between a stored scaled block ``scaled = fl(factor arr)``
    and the exact product ``factor_64 arr`` (``factor_64`` the float64 value of the factor).

    0 when the factor is a power of two (the product is exact). The exact product is the
    float64 product for float32 blocks, and ``p + e`` by Dekker's two-product (Veltkamp
    splitting) for float64 blocks. Docs: docs/spec.md section 4.2, "Low-precision storage".
    """
    a = np.asarray(to_numpy(arr), dtype=np.float64).reshape(-1)  # [n]
    got = np.asarray(to_numpy(scaled)).reshape(-1)  # [n]
    if a.size == 0:
        return 0.0
    dt = got.dtype
    f = float(factor)
    if np.dtype(dt) == np.float32:
        exact_hi, exact_lo = a * f, np.zeros_like(a)
    else:
        exact_hi, exact_lo = _two_product(a, f)
    diff = np.abs((got.astype(np.float64) - exact_hi) - exact_lo)  # [n]
    ulps = np.spacing(np.abs(got).astype(dt)).astype(np.float64)  # [n]
    ulps = np.where(ulps > 0, ulps, np.finfo(dt).tiny)
    return float(np.max(diff / ulps))


def _two_product(a, b: float):
    """``(p, e)`` with ``p = fl(a b)`` and ``a b = p + e`` exactly (Dekker; no FMA needed)."""
    c = 134217729.0  # 2^27 + 1, Veltkamp's splitter for float64

    def split(x):
        t = c * x
        hi = t - (t - x)
        return hi, x - hi

    p = a * b
    ah, al = split(a)
    bh, bl = split(np.float64(b))
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


# ---- rounding steps ---------------------------------------------------------------------


def layer_reductions(layer: Layer, h: int, s: int, arch: Arch | None = None) -> int:
    """``R_n``: reduction lengths of one layer along one path of the forward pass.

    The norms' means (``h`` twice), Q/K/V (``h``), the logits (``max_e k_e``), the softmax
    sum and the weighted sum of values (``s`` twice), ``W_O`` (``sum_e v_e``), ``W_l1``
    (``h``) and ``W_l2`` (``p``): ``4h + k_max + 2s + sum_e v_e + p``. The blocks of
    docs/spec.md section 4 (``arch``) add :func:`arch_reductions`.
    """
    base = 4 * h + max(hd.k for hd in layer.heads) + 2 * s + sum(hd.v for hd in layer.heads) + layer.p
    return base + (0 if arch is None else arch_reductions(arch, h, s))


def arch_reductions(arch: Arch, h: int, s: int) -> int:
    """The rounding steps the blocks of docs/spec.md section 4 add to one layer's path.

    LayerNorm: the mean subtracted before the variance (``h`` per norm, ``2h``); gated MLP:
    the gate's product ``W_gate`` (``h``, multiplied into the path); attention biases: one
    addition each (``C_BIAS``; the MLP's are the paper's, in ``C_LAYER``); activations other than ReLU: their evaluation (``C_ACT`` ulps: erf, tanh
    are accurate to a few ulps); RoPE: the rotation (two products and a sum per entry) and
    the angles ``m theta^(-2i/k)``, whose relative error of a few ``u`` grows with the
    position ``m < s`` (``3s + C_ROPE``), since an expanded model's ``theta'`` is rounded.
    """
    n = 0
    if arch.norm == "layer":
        n += 2 * h
    if arch.mlp == "gated":
        n += h
    n += C_BIAS * (int(arch.qkv_bias) + int(arch.o_bias))  # the MLP biases are the paper's (C_LAYER)
    if arch.act != "relu":
        n += C_ACT
    if arch.positions == "rope":
        n += 3 * s + C_ROPE
    return n


def reduction_length(model: Model, s: int) -> int:
    """``L(model, s) = h + sum_n R_n``: every layer's reductions and ``W_out`` (``h``), and the
    final norm's mean (``h``, twice for LayerNorm) when the model has one."""
    arch = model.arch
    final = (2 if arch.norm == "layer" else 1) * model.h if arch.final_norm else 0
    return model.h + final + sum(layer_reductions(layer, model.h, s, arch) for layer in model.layers)


def tolerance_ulps(a: Model, b: Model, s: int) -> float:
    """``L(a, s) + L(b, s) + 4``: the preservation bound in ulps of the natural output scale."""
    return float(reduction_length(a, s) + reduction_length(b, s) + C_SCALINGS)


def path_lengths(model: Model, s: int) -> dict:
    """``L_T`` (agreement) for ``residual.0 .. residual.N`` and ``output``.

    ``L(residual.0) = C_IN``, ``L(residual.n) = L(residual.{n-1}) + R_{n-1} + C_LAYER``,
    ``L(output) = L(residual.N) + h + C_OUT``.

    Parameters
    ----------
    model : Model
    s : int
        Sequence length of the inputs.

    Returns
    -------
    dict name -> int
    """
    out = {residual_name(0): C_IN}
    total = C_IN
    for n, layer in enumerate(model.layers):
        total += layer_reductions(layer, model.h, s, model.arch) + C_LAYER
        out[residual_name(n + 1)] = total
    final = (2 if model.arch.norm == "layer" else 1) * model.h + 6 if model.arch.final_norm else 0
    out["output"] = total + model.h + final + C_OUT
    return out


# ---- natural scales ----------------------------------------------------------------------


def magnitudes(model: Model, tr, nested: bool) -> list:
    """Running magnitudes ``M_1 .. M_{N+1}`` [b, s, h] of the terms each residual stream sums.

    A fold over ``tr = fpt_ref.forward.trace(model, x)``. A residual stream is a sum of terms
    (input, positions, every branch output); its rounding error is bounded relative to the
    sum of their absolute values, not to the stream, which cancellation can make small::

        M_1     = |I| + |P|
        M'_n    = M_n  + |H| |W_O|                  H = [H_1 .. H_E], the heads' outputs
        M_{n+1} = M'_n + |A| |W_l2| + |b_l2|        A = ReLU(Norm(X'_n) W_l1 + b_l1)

    ``nested=False`` (agreement) takes ``|H|`` and ``|A|`` as computed. ``nested=True``
    (preservation) replaces them by bounds on their own terms, ``max_s(|Norm(X_n)| |W_V|)``
    (``|softmax V| <= max over rows of |V|``) and ``|Norm(X'_n)| |W_l1| + |b_l1|``, so that
    cancellation inside the branches cannot shrink the scale either.

    The blocks of docs/spec.md section 4 add their terms: ``|b_o|`` to ``M'_n``, ``|b_v|``
    to the value bound; every activation has ``|act(z)| <= |z|``, and a gated MLP's product
    is bounded by the product of the gate's and the up projection's bounds; without learned
    positions ``M_1 = |I|``.

    Returns a list of N + 1 arrays [b, s, h] (or [s, h] for an unbatched trace).
    """
    M = first_magnitude(model, tr.inputs, model.pos)  # M_1 [b, s, h]
    out = [M]
    for layer, t in zip(model.layers, tr.layers):
        M = magnitude_step(model, layer, t, M, nested)  # M_{n+1} [b, s, h]
        out.append(M)
    return out


def first_magnitude(model: Model, inputs, pos):
    """``M_1 = |I| + |P|`` (``|I|`` without learned positions): inputs [b, s, h], pos [s_max, h] or None."""
    xp = model.xp
    M = xp.abs(inputs)  # [b, s, h]
    if pos is not None:
        M = M + xp.abs(pos[: inputs.shape[-2]])  # [b, s, h]
    return M


def magnitude_step(model: Model, layer: Layer, t, M, nested: bool):
    """``M_{n+1}`` from ``M_n`` [b, s, h] through ``layer`` and its :class:`~fpt_ref.forward.LayerTrace`
    ``t`` (:func:`magnitudes`; one layer at a time, as a streamed forward computes them)."""
    xp = model.xp

    def plus(a, bias):  # a + |bias| (bias may be absent)
        return a if bias is None else a + xp.abs(bias)

    if nested:
        w_v = xp.concatenate([hd.w_v for hd in layer.heads], axis=1)  # [h, sum v]
        w_o = xp.concatenate([hd.w_o for hd in layer.heads], axis=0)  # [sum v, h]
        V = xp.abs(t.attn_in) @ xp.abs(w_v)  # [b, s, sum v]
        if model.arch.qkv_bias:
            V = V + xp.abs(xp.concatenate([hd.b_v for hd in layer.heads]))  # [b, s, sum v]
        H = xp.max(V, axis=-2, keepdims=True)  # [b, 1, sum v]  >= |H|
        A = plus(xp.abs(t.mlp_in) @ xp.abs(layer.w_l1), layer.b_l1)  # [b, s, p]  >= |up|
        if layer.w_gate is not None:
            A = A * plus(xp.abs(t.mlp_in) @ xp.abs(layer.w_gate), layer.b_gate)  # [b, s, p]  >= |A|
    else:
        w_o = t.w_o  # [sum v, h]  in the trace's head order, like H
        H, A = xp.abs(t.heads), xp.abs(t.act)  # [b, s, sum v], [b, s, p]
    M = plus(M + H @ xp.abs(w_o), layer.b_o)  # M'_n [b, s, h]
    return plus(M + A @ xp.abs(layer.w_l2), layer.b_l2)  # M_{n+1} [b, s, h]


def magnitude_streams(model: Model, x) -> list:
    """The nested magnitudes ``[M_1 .. M_{N+1}]`` of ``model`` on ``x`` (:func:`magnitudes`)."""
    return magnitudes(model, trace(model, x), nested=True)


def natural_scale(model: Model, last, stream=None) -> float:
    """``max |M| @ |W_out|`` for a last magnitude (or residual) stream ``M`` [..., s, h].

    With a final norm the output reads ``Norm_f(X)``, whose error is the stream's error times
    ``|g| / r`` (``r = sqrt(mean(x^2) + eps)``, or the centred ``sqrt(var + eps)`` of LayerNorm):
    the scale is ``max (|M| |g| / r + |beta|) @ |W_out|``, with ``stream`` the last residual
    stream ``X_{N+1}`` (required then). Computed in float64, so that a float32 model's scale
    cannot overflow.
    """
    xp = model.xp
    if not last.size:
        return 0.0
    M = output_magnitude(model, last, stream)  # [..., s, h]
    return float(xp.max(M @ xp.abs(model.output_matrix).astype(xp.float64)))


def output_magnitude(model: Model, last, stream=None):
    """The magnitude ``W_out`` reads, in float64: ``|M|``, or ``|M| |g| / r + |beta|`` with a final norm
    (:func:`natural_scale` is ``max`` of it times ``|W_out|``); last, stream [..., s, h] -> [..., s, h]."""
    xp = model.xp
    f64 = xp.float64
    M = xp.abs(last).astype(f64)  # [..., s, h]
    if model.final_norm is not None:
        if stream is None:
            raise ValueError("stream: a model with a final norm needs the last residual stream")
        X = stream.astype(f64)  # [..., s, h]
        if model.arch.norm == "layer":
            X = X - xp.mean(X, axis=-1, keepdims=True)
        r = xp.sqrt(xp.mean(X * X, axis=-1, keepdims=True) + model.norm_eps)  # [..., s, 1]
        M = M * xp.abs(model.final_norm).astype(f64) / xp.maximum(r, xp.finfo(f64).tiny)  # [..., s, h]
        if model.final_norm_b is not None:
            M = M + xp.abs(model.final_norm_b).astype(f64)
    return M


def preservation_scale(model: Model, tr, nested: bool = True) -> float:
    """``S``: the natural output scale of the preservation policy, from ``tr = trace(model, x)``.

    ``nested=False`` gives the agreement policy's (tighter) output scale instead.
    """
    return natural_scale(model, magnitudes(model, tr, nested)[-1], tr.streams[-1])


def natural_scales(model: Model, x) -> dict:
    """``S_T`` (agreement) of ``residual.0 .. residual.N`` and ``output``, not nested.

    ``S(residual.n) = max M_{n+1}``, ``S(output) = max M_{N+1} |W_out|``, from one trace.

    Parameters
    ----------
    model : Model
    x : token ids [b, s] or real inputs [b, s, h]
    """
    xp = model.xp
    tr = trace(model, x)
    Ms = magnitudes(model, tr, nested=False)  # N + 1 of [b, s, h]
    out = {residual_name(n): float(xp.max(M)) for n, M in enumerate(Ms)}
    out["output"] = natural_scale(model, Ms[-1], tr.streams[-1])
    return out


# ---- the two policies --------------------------------------------------------------------


def tolerance_abs(a: Model, b: Model, s: int, scale: float) -> float:
    """Preservation: ``tol_abs = (L(a, s) + L(b, s) + 4) ulp(S)``, the ulp in the dtype of ``a``.

    Parameters
    ----------
    a, b : Model
        The reference model and the model compared with it (same dtype).
    s : int
        Sequence length of the inputs.
    scale : float
        ``S``, :func:`preservation_scale` of ``a`` on the inputs.
    """
    return tolerance_ulps(a, b, s) * ulp(scale, a.dtype)


def tolerances(model: Model, x, reference: dict) -> dict:
    """Agreement: per-dtype, per-tensor ``atol``/``rtol`` for the case ``(model, x)``.

    Parameters
    ----------
    model : Model
        The float64 reference model.
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


# ---- measuring ---------------------------------------------------------------------------


def error_stats(ref, out, dtype=None) -> dict:
    """``max_abs``, ``max_rel``, ``max_ulp`` of ``out`` against ``ref`` (same shape).

    ``max_ulp`` counts ulps of ``max |ref|`` in ``dtype`` (default: ``ref``'s dtype). NaN or
    inf anywhere gives ``inf`` for all three.
    """
    ref = np.asarray(to_numpy(ref))
    out = np.asarray(to_numpy(out))
    if ref.shape != out.shape:
        raise ValueError(f"out: shape {list(out.shape)} differs from the reference's {list(ref.shape)}")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(out))):
        return {"max_abs": float("inf"), "max_rel": float("inf"), "max_ulp": float("inf")}
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return {
        "max_abs": diff,
        "max_rel": diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")),
        "max_ulp": diff / ulp(scale, ref.dtype if dtype is None else dtype),
    }


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

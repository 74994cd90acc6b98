"""The forward pass of docs/spec.md section 1 (paper eqs. 1-5), NumPy or CuPy.

The spec (docs/spec.md) overrides this implementation. Row-vector convention: activations
are ``[b, s, h]`` and weights multiply on the right. No Python loop runs over batch or
sequence positions; heads of equal ``(k, v)`` are batched into one matmul.

:func:`forward` keeps only the current residual stream; :func:`trace` runs the same layers
and keeps every intermediate (:class:`Trace`), so that the residual streams and the
tolerance scales of :mod:`fpt_ref.tolerance` are folds over one forward pass instead of
walks of their own.

Performance notes (see docs/benchmarks.md): large temporaries that the function itself
created (logits ``[b, G, s, s]``, MLP activations ``[b, s, p]``, branch outputs
``[b, s, h]``) are updated in place instead of being re-allocated, since fresh allocations
of that size cost page faults and memory traffic. In-place updates touch only arrays made
here, never an input, and compute bit for bit the same values as the out-of-place
expressions they replace (``a += b`` rounds like ``a + b``; ``x + y == y + x`` in IEEE).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from .model import Array, Layer, Model
from .xp import array_namespace as _xp


def rms_norm(x, g, eps: float):
    """``Norm(X)_ij = x_ij g_j / sqrt(mean_c x_ic^2 + eps)``.

    x: [b, s, h], g: [h] -> [b, s, h]
    """
    xp = _xp(x)
    ms = xp.mean(x * x, axis=-1, keepdims=True)  # [b, s, 1]
    out = x * g  # [b, s, h]  a new array
    out /= xp.sqrt(ms + eps)  # [b, s, h]  (x g) / sqrt(.)
    return out


def layer_norm(x, g, beta, eps: float):
    """``LayerNorm(X)_ij = g_j (x_ij - mu_i) / sqrt(mean_c (x_ic - mu_i)^2 + eps) + beta_j`` (spec 4.1).

    x: [b, s, h], g, beta: [h] -> [b, s, h]
    """
    xp = _xp(x)
    xc = x - xp.mean(x, axis=-1, keepdims=True)  # [b, s, h]  x - mu
    var = xp.mean(xc * xc, axis=-1, keepdims=True)  # [b, s, 1]
    xc *= g  # [b, s, h]  (x - mu) g
    xc /= xp.sqrt(var + eps)  # [b, s, h]
    xc += beta  # [b, s, h]
    return xc


def norm(model: Model, x, g, beta):
    """The model's norm (``arch.norm``) with gain ``g`` and LayerNorm bias ``beta``; [b, s, h]."""
    if model.arch.norm == "layer":
        return layer_norm(x, g, beta, model.norm_eps)
    return rms_norm(x, g, model.norm_eps)


def _erf(x):
    """``erf`` elementwise, from SciPy (NumPy) or cupyx (CuPy): NumPy has none."""
    if type(x).__module__.startswith("cupy"):
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(x)


def relu(a):
    """``max(a, 0)`` in place on ``a`` (an array this module created); returns it."""
    _xp(a).maximum(a, 0, out=a)
    return a


def gelu(a):
    """``a/2 (1 + erf(a / sqrt 2))`` (spec 4.1)."""
    return 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0)))


def gelu_tanh(a):
    """``a/2 (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))`` (spec 4.1)."""
    xp = _xp(a)
    return 0.5 * a * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * (a * a * a))))


def silu(a):
    """``a / (1 + exp(-a))``, computed as ``(a/2) (1 + tanh(a/2))`` (equal in real arithmetic; no
    overflow), in place on ``a`` (an array this module created); returns it."""
    xp = _xp(a)
    a *= 0.5  # a/2, exact
    u = xp.tanh(a)  # tanh(a/2)
    u += 1.0
    a *= u  # (a/2) (1 + tanh(a/2))
    return a


#: ``Arch.act`` -> the elementwise function (each may update its argument in place)
ACTIVATIONS = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu}


@functools.lru_cache(maxsize=32)
def rope_tables(theta: float, k: int, s: int, xp, dtype):
    """``cos`` and ``sin`` of the RoPE angles ``m theta^(-2i/k)``, each [s, k/2] (spec 4.1).

    The angles are computed in float64 whatever the model's dtype (the reference semantics),
    then cast. The tables depend only on the arguments, so they are computed once and kept
    (read-only for NumPy): every layer and every forward of the same sizes shares them.
    """
    i = np.arange(k // 2, dtype=np.float64)  # [k/2]
    inv_freq = float(theta) ** (-2.0 * i / k)  # [k/2]
    ang = np.arange(s, dtype=np.float64)[:, None] * inv_freq[None, :]  # [s, k/2]
    cos, sin = xp.asarray(np.cos(ang), dtype=dtype), xp.asarray(np.sin(ang), dtype=dtype)  # [s, k/2] each
    for t in (cos, sin):
        if isinstance(t, np.ndarray):
            t.setflags(write=False)
    return cos, sin


def rope(x, cos, sin, layout: str):
    """Rotate the pairs of the last axis of ``x`` by the angles of ``cos``/``sin`` (spec 4.1).

    x: [..., s, k], cos/sin: [s, k/2] -> [..., s, k] (a new array). ``layout="half"`` pairs
    ``i`` with ``i + k/2``, ``"interleaved"`` pairs ``2i`` with ``2i + 1``.
    """
    xp = _xp(x)
    k = x.shape[-1]
    if layout == "half":
        a, b = x[..., : k // 2], x[..., k // 2 :]  # [..., s, k/2] each
        return xp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)  # [..., s, k]
    a, b = x[..., 0::2], x[..., 1::2]  # [..., s, k/2] each
    return xp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(x.shape)  # [..., s, k]


def attention(q, k, v, causal: bool):
    """``softmax_rows(Q K^T / sqrt(k)) V`` for a stack of heads.

    q: [b, G, r, s, k], k: [b, G, 1, s, k] (or [b, G, r, s, k]), v: [b, G, 1, s, v]
    -> [b, G, r, s, v]: the ``r`` query heads of a group share its keys and values.
    """
    xp = _xp(q)
    w = q @ xp.swapaxes(k, -1, -2)  # [b, G, r, s, s]  a new array, updated in place below
    w /= math.sqrt(q.shape[-1])  # [b, G, r, s, s]  logits Q K^T / sqrt(k)
    if causal:
        s = w.shape[-1]
        future = xp.triu(xp.ones((s, s), dtype=bool), 1)  # [s, s]  True above the diagonal
        w += xp.where(future, -xp.inf, 0.0).astype(w.dtype)  # [b, G, r, s, s]  -inf above it, exact elsewhere
    w -= xp.max(w, axis=-1, keepdims=True)  # [b, G, r, s, s]  (same softmax, no overflow)
    xp.exp(w, out=w)  # [b, G, r, s, s]
    w /= xp.sum(w, axis=-1, keepdims=True)  # [b, G, r, s, s]  softmax_rows
    return w @ v  # [b, G, r, s, v]


def head_groups(layer: Layer) -> list:
    """Indices of the layer's heads batched by equal ``(k, v)``, in first-seen order.

    ``[((k, v), [e, ...]), ...]``; in a grouped-query layer whole groups are batched and
    the heads of a group are consecutive (the order of the rows of ``W_O`` in :func:`mha`).
    """
    r = layer.group_size
    batches: dict = {}
    for g in range(layer.G):
        head = layer.heads[g * r]
        batches.setdefault((head.k, head.v), []).extend(range(g * r, (g + 1) * r))
    return list(batches.items())


def _cat(parts: list, axis: int):
    return parts[0] if len(parts) == 1 else _xp(parts[0]).concatenate(parts, axis=axis)


def _dense(x, w):
    """``x @ w`` as one 2-D product over every row: x [b, s, n], w [n, m] -> [b, s, m].

    One GEMM over ``b s`` rows instead of a stack of ``b`` products; each output row is the
    same dot products, computed bit for bit alike (docs/benchmarks.md)."""
    b, s, n = x.shape
    return (x.reshape(b * s, n) @ w).reshape(b, s, w.shape[-1])


@dataclass(frozen=True)
class Fused:
    """A layer's attention weights in :func:`mha`'s batch order (:func:`fused`).

    ``w_qkv`` [h, sum(k) + sum_G(k + v)] holds every query head's ``W_Q`` then every key/value
    head's ``W_K`` and ``W_V``; ``b_qkv`` the biases in the same order (or None); ``w_o``
    [sum v, h] the rows of ``W_O`` in the same head order."""

    batches: list
    w_qkv: Array
    b_qkv: Array | None
    w_o: Array


def fused(layer: Layer) -> Fused:
    """The concatenated attention weights of ``layer``, built once per layer and kept with it.

    A layer is immutable (its arrays are read-only by contract), so the concatenation is
    cached on the layer object itself; a replaced layer (``dataclasses.replace``) is a new
    object and builds its own.
    """
    cache = layer.__dict__.get("_fused")
    if cache is None:
        r = layer.group_size
        batches = head_groups(layer)
        heads = [layer.heads[e] for _, idx in batches for e in idx]  # batch order
        leaders = heads[::r]  # one per key/value head, batch order
        w_qkv = _cat([H.w_q for H in heads] + [H.w_k for H in leaders] + [H.w_v for H in leaders], axis=1)
        b_qkv = None
        if heads[0].b_q is not None:
            b_qkv = _cat([H.b_q for H in heads] + [H.b_k for H in leaders] + [H.b_v for H in leaders], axis=0)
        cache = Fused(batches, w_qkv, b_qkv, _cat([H.w_o for H in heads], axis=0))
        layer.__dict__["_fused"] = cache  # frozen dataclass: a derived value, not a field
    return cache


def mha(model: Model, layer: Layer, x, parts: dict | None = None):
    """``MHA(X) = [H_1 ... H_E] W_O (+ b_o)``; x: [b, s, h] -> [b, s, h] (spec 1, 4.1).

    One matmul computes the queries of every head and the keys and values of every key/value
    head; heads are batched by ``(k, v)`` (:func:`head_groups`), each batch one attention
    whose query heads broadcast against their group's keys and values. Concatenating the
    heads' outputs in batch order and the rows of ``W_O`` in the same order computes the
    same sum as the paper's ordering. ``parts``: a dict receiving ``attn_in`` (x), ``heads``
    and ``w_o`` (:class:`LayerTrace`), or None.
    """
    xp = _xp(x)
    b, s, _ = x.shape
    r = layer.group_size
    f = fused(layer)
    batches = f.batches
    qkv = _dense(x, f.w_qkv)  # [b, s, sum(k) + sum_G(k + v)]
    if f.b_qkv is not None:
        qkv += f.b_qkv  # [b, s, sum(k) + sum_G(k + v)]
    rope_on = model.arch.positions == "rope"
    n_q = sum(k * len(idx) for (k, _), idx in batches)
    n_k = n_q // r
    outs = []
    oq, ok, ov = 0, n_q, n_q + n_k
    for (k, v), idx in batches:
        G = len(idx) // r  # key/value heads in this batch
        q = qkv[..., oq : oq + G * r * k].reshape(b, s, G, r, k).transpose(0, 2, 3, 1, 4)  # [b, G, r, s, k]
        kk = qkv[..., ok : ok + G * k].reshape(b, s, G, 1, k).transpose(0, 2, 3, 1, 4)  # [b, G, 1, s, k]
        vv = qkv[..., ov : ov + G * v].reshape(b, s, G, 1, v).transpose(0, 2, 3, 1, 4)  # [b, G, 1, s, v]
        oq, ok, ov = oq + G * r * k, ok + G * k, ov + G * v
        if rope_on:
            cos, sin = rope_tables(model.arch.rope_theta, k, s, xp, x.dtype)  # [s, k/2] each
            q = rope(q, cos, sin, model.arch.rope_layout)  # [b, G, r, s, k]
            kk = rope(kk, cos, sin, model.arch.rope_layout)  # [b, G, 1, s, k]
        hg = attention(q, kk, vv, model.causal)  # [b, G, r, s, v]
        outs.append(hg.transpose(0, 3, 1, 2, 4).reshape(b, s, G * r * v))  # [b, s, G r v]
    heads_out = _cat(outs, axis=-1)  # [b, s, sum v]
    if parts is not None:
        parts.update(attn_in=x, heads=heads_out, w_o=f.w_o)
    out = _dense(heads_out, f.w_o)  # [b, s, h]
    if layer.b_o is not None:
        out += layer.b_o  # [b, s, h]
    return out


def mlp(model: Model, layer: Layer, x, parts: dict | None = None, activation=None):
    """``act(X W_l1 + b_l1) W_l2 + b_l2``, or gated ``(act(X W_gate + b_gate) * (X W_l1 + b_l1)) W_l2 + b_l2``.

    x: [b, s, h] -> [b, s, h] (spec 1, 4.1). ``parts``: a dict receiving ``mlp_in`` (x) and
    ``act`` (the input of ``W_l2``; :class:`LayerTrace`), or None. ``activation``: see :func:`trace`.
    """
    fn = ACTIVATIONS[model.arch.act] if activation is None else activation
    a = _dense(x, layer.w_l1)  # [b, s, p]  a new array, updated in place below
    if layer.b_l1 is not None:
        a += layer.b_l1  # [b, s, p]
    if layer.w_gate is None:
        a = fn(a)  # [b, s, p]
    else:
        gate = _dense(x, layer.w_gate)  # [b, s, p]
        if layer.b_gate is not None:
            gate += layer.b_gate  # [b, s, p]
        a *= fn(gate)  # [b, s, p]  act(gate) * up
    if parts is not None:
        parts.update(mlp_in=x, act=a)
    out = _dense(a, layer.w_l2)  # [b, s, h]
    if layer.b_l2 is not None:
        out += layer.b_l2  # [b, s, h]
    return out


@dataclass(frozen=True)
class LayerTrace:
    """What one layer computed (:func:`trace`); ``G`` is :func:`head_groups` order."""

    attn_in: Array  # [b, s, h]  Norm^MHA(X_n)
    heads: Array  # [b, s, sum v]  H_e of every head, in G order
    w_o: Array  # [sum v, h]  the rows of W_O, in G order (MHA output = heads @ w_o)
    mid: Array  # [b, s, h]  X'_n = X_n + MHA(Norm^MHA(X_n))
    mlp_in: Array  # [b, s, h]  Norm^MLP(X'_n)
    act: Array  # [b, s, p]  the input of W_l2: act(Norm^MLP(X'_n) W_l1 + b_l1), or the gated product


@dataclass(frozen=True)
class Trace:
    """Every intermediate of one forward pass (:func:`trace`); batched like the input ``x``."""

    inputs: Array  # [b, s, h]  I: the embedding rows of the tokens, or the real inputs in the model's dtype
    streams: tuple  # N + 1 of [b, s, h]  the residual streams X_1 = I + P, ..., X_{N+1}
    layers: tuple  # N of LayerTrace
    output: Array  # [b, s, o]  X_{N+1} W_out, bit for bit forward(model, x)


def block(model: Model, layer: Layer, x, record=None, activation=None):
    """One layer: ``X' = X + MHA(Norm(X))``, ``X_next = X' + MLP(Norm(X'))``; [b, s, h].

    ``record``: a list to which the layer's :class:`LayerTrace` is appended, or None (nothing
    is kept, so temporaries are freed as soon as they are used). ``activation``: see :func:`trace`.
    """
    parts: dict[str, Array] | None = None if record is None else {}
    y = mha(model, layer, norm(model, x, layer.norm_mha, layer.norm_mha_b), parts)  # [b, s, h]  new
    y += x  # [b, s, h]  X' = X + MHA(Norm(X))
    z = mlp(model, layer, norm(model, y, layer.norm_mlp, layer.norm_mlp_b), parts, activation)  # [b, s, h]  new
    z += y  # [b, s, h]  X_next = X' + MLP(Norm(X'))
    if record is not None:
        assert parts is not None  # a dict whenever record is given
        record.append(LayerTrace(mid=y, **parts))
    return z


def input_rows(model: Model, x):
    """``I``: the embedding rows of token ids [b, s], or real inputs [b, s, h] in the model's dtype.

    Validates the input against the model and raises ``ValueError`` naming ``x``. Returns [b, s, h].
    """
    xp = model.xp
    x = xp.asarray(x)
    if model.embed is not None:
        if x.dtype.kind not in "iu":
            raise ValueError(
                f"x: this model has an embedding table, so x must hold integer token ids, got dtype {x.dtype}"
            )
        if x.ndim != 2:
            raise ValueError(f"x: token ids must have shape [s] or [b, s], got {list(x.shape)}")
        assert model.vocab is not None  # the embedding table's row count
        if x.size and (int(x.min()) < 0 or int(x.max()) >= model.vocab):
            raise ValueError(f"x: token ids must lie in [0, {model.vocab}), got range [{int(x.min())}, {int(x.max())}]")
        inp = model.embed[x]  # [b, s, h]
    else:
        if x.dtype.kind != "f":
            raise ValueError(
                f"x: this model has no embedding table, so x must be real-valued [s, h] or [b, s, h], got dtype {x.dtype}"
            )
        if x.ndim != 3 or x.shape[-1] != model.h:
            raise ValueError(
                f"x: real-valued inputs must have shape [s, {model.h}] or [b, s, {model.h}], got {list(x.shape)}"
            )
        inp = x.astype(model.dtype, copy=False)  # [b, s, h]
    s = x.shape[1]
    if s < 1 or s > model.s_max:
        raise ValueError(f"x: sequence length {s} must be between 1 and s_max={model.s_max}")
    return inp


def embed_inputs(model: Model, x):
    """``X_1 = I + P`` (``I`` without learned positions): token ids [b, s] (or real inputs
    [b, s, h]) -> [b, s, h] (:func:`input_rows`)."""
    return _first_stream(model, input_rows(model, x))


def _first_stream(model: Model, inp):
    """``X_1`` from ``I`` [b, s, h]: ``I + P`` with learned positions, else a copy of ``I``."""
    if model.pos is None:
        return inp  # [b, s, h]  (never updated in place: each layer makes new arrays)
    return inp + model.pos[: inp.shape[1]]  # [b, s, h]


def output(model: Model, X):
    """``Norm_f(X_{N+1}) W_out`` (``W_out = embed^T`` when tied); [b, s, h] -> [b, s, o]."""
    return _dense(final_normed(model, X), model.output_matrix)  # [b, s, o]


def final_normed(model: Model, X):
    """``Norm_f(X_{N+1})``, or ``X_{N+1}`` itself without a final norm: the rows ``W_out`` reads; [b, s, h]."""
    if model.final_norm is None:
        return X
    return norm(model, X, model.final_norm, model.final_norm_b)  # [b, s, h]


def _batched(model: Model, x):
    """Add a batch axis to unbatched input; returns (x, was_unbatched)."""
    xp = model.xp
    x = xp.asarray(x)
    unbatched = x.ndim == (1 if model.embed is not None else 2)
    return (x[None] if unbatched else x), unbatched


def forward(model: Model, x):
    """``Output = X_{N+1} W_out`` (``Norm_f(X_{N+1}) W_out`` with a final norm; spec 1, 4.1).

    Parameters
    ----------
    model : Model
    x : token ids [s] or [b, s] (model with ``embed``), else real inputs [s, h] or [b, s, h]

    Returns
    -------
    array [s, o] or [b, s, o], in the model's dtype and array library.
    """
    xb, unbatched = _batched(model, x)
    X = embed_inputs(model, xb)  # [b, s, h]
    for layer in model.layers:
        X = block(model, layer, X)  # [b, s, h]
    out = output(model, X)  # [b, s, o]
    return out[0] if unbatched else out


def trace(model: Model, x, activation=None) -> Trace:
    """The forward pass with every intermediate kept: a :class:`Trace`.

    The same operations as :func:`forward` in the same order, so ``trace(model, x).output``
    equals ``forward(model, x)`` bit for bit; it only keeps references to arrays the pass
    creates anyway (memory, not time). Quantities derived from the forward pass (residual
    streams, tolerance scales) are computed from a trace rather than by walking the model again.

    Parameters
    ----------
    model : Model
    x : as for :func:`forward`; unbatched input gives unbatched arrays in the trace.
    activation : callable or None
        Elementwise function replacing the model's activation in every MLP (array [b, s, p] -> [b, s, p]), for
        claims that hold for any activation (proofs/); None is the model's own (``arch.act``).
    """
    xb, unbatched = _batched(model, x)
    inp = input_rows(model, xb)  # I [b, s, h]
    X = _first_stream(model, inp)  # X_1 [b, s, h]  (as embed_inputs)
    streams = [X]
    layers: list[LayerTrace] = []
    for layer in model.layers:
        X = block(model, layer, X, layers, activation)  # X_{n+1} [b, s, h]
        streams.append(X)
    out = output(model, X)  # [b, s, o]
    tr = Trace(inp, tuple(streams), tuple(layers), out)
    return _unbatched(tr) if unbatched else tr


def _unbatched(tr: Trace) -> Trace:
    """The trace with the batch axis (of size 1) dropped from every per-input array."""
    per_input = ("attn_in", "heads", "mid", "mlp_in", "act")  # LayerTrace fields with a batch axis
    layers = tuple(replace(t, **{f: getattr(t, f)[0] for f in per_input}) for t in tr.layers)
    return Trace(tr.inputs[0], tuple(X[0] for X in tr.streams), layers, tr.output[0])


def residual_streams(model: Model, x) -> list:
    """The residual streams ``[X_1, ..., X_{N+1}]``, each [b, s, h] (or [s, h] unbatched)."""
    return list(trace(model, x).streams)

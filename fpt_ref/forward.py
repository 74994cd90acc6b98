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

import math
from dataclasses import dataclass, replace

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


def attention(q, k, v, causal: bool):
    """``softmax_rows(Q K^T / sqrt(k)) V`` for a stack of heads.

    q, k: [b, G, s, k], v: [b, G, s, v] -> [b, G, s, v]
    """
    xp = _xp(q)
    w = q @ xp.swapaxes(k, -1, -2)  # [b, G, s, s]  a new array, updated in place below
    w /= math.sqrt(q.shape[-1])  # [b, G, s, s]  logits Q K^T / sqrt(k)
    if causal:
        s = w.shape[-1]
        future = xp.triu(xp.ones((s, s), dtype=bool), 1)  # [s, s]  True above the diagonal
        w += xp.where(future, -xp.inf, 0.0).astype(w.dtype)  # [b, G, s, s]  -inf above it, exact elsewhere
    w -= xp.max(w, axis=-1, keepdims=True)  # [b, G, s, s]  (same softmax, no overflow)
    xp.exp(w, out=w)  # [b, G, s, s]
    w /= xp.sum(w, axis=-1, keepdims=True)  # [b, G, s, s]  softmax_rows
    return w @ v  # [b, G, s, v]


def head_groups(layer: Layer) -> list:
    """Indices of the layer's heads grouped by equal ``(k, v)``, in first-seen order."""
    groups: dict = {}
    for e, head in enumerate(layer.heads):
        groups.setdefault((head.k, head.v), []).append(e)
    return list(groups.items())


def mha(layer: Layer, x, causal: bool, parts: dict | None = None):
    """``MHA(X) = [H_1 ... H_E] W_O``; x: [b, s, h] -> [b, s, h].

    One matmul computes Q, K and V of every head; heads are regrouped by ``(k, v)`` so each
    group runs as one batched attention. Concatenating the heads' outputs in group order and
    the rows of ``W_O`` in the same order computes the same sum as the paper's ordering.
    ``parts``: a dict receiving ``attn_in`` (x), ``heads`` and ``w_o`` (:class:`LayerTrace`),
    or None.
    """
    xp = _xp(x)
    b, s, _ = x.shape
    groups = head_groups(layer)
    w_qkv = xp.concatenate(
        [layer.heads[e].w_q for _, idx in groups for e in idx]
        + [layer.heads[e].w_k for _, idx in groups for e in idx]
        + [layer.heads[e].w_v for _, idx in groups for e in idx],
        axis=1,
    )  # [h, sum(2k + v)]
    qkv = x @ w_qkv  # [b, s, sum(2k + v)]
    n_q = sum(k * len(idx) for (k, _), idx in groups)
    n_v = sum(v * len(idx) for (_, v), idx in groups)
    outs = []
    oq, ok, ov = 0, n_q, 2 * n_q
    for (k, v), idx in groups:
        G = len(idx)
        q = qkv[..., oq : oq + G * k].reshape(b, s, G, k).transpose(0, 2, 1, 3)  # [b, G, s, k]
        kk = qkv[..., ok : ok + G * k].reshape(b, s, G, k).transpose(0, 2, 1, 3)  # [b, G, s, k]
        vv = qkv[..., ov : ov + G * v].reshape(b, s, G, v).transpose(0, 2, 1, 3)  # [b, G, s, v]
        oq, ok, ov = oq + G * k, ok + G * k, ov + G * v
        hg = attention(q, kk, vv, causal)  # [b, G, s, v]
        outs.append(hg.transpose(0, 2, 1, 3).reshape(b, s, G * v))  # [b, s, G v]
    assert ov == 2 * n_q + n_v
    heads_out = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)  # [b, s, sum v]
    w_o = xp.concatenate([layer.heads[e].w_o for _, idx in groups for e in idx], axis=0)  # [sum v, h]
    if parts is not None:
        parts.update(attn_in=x, heads=heads_out, w_o=w_o)
    return heads_out @ w_o  # [b, s, h]


def mlp(layer: Layer, x, parts: dict | None = None, activation=None):
    """``MLP(X) = ReLU(X W_l1 + b_l1) W_l2 + b_l2``; x: [b, s, h] -> [b, s, h].

    ``parts``: a dict receiving ``mlp_in`` (x) and ``act`` (:class:`LayerTrace`), or None.
    ``activation``: see :func:`trace`.
    """
    xp = _xp(x)
    a = x @ layer.w_l1  # [b, s, p]  a new array, updated in place below
    a += layer.b_l1  # [b, s, p]
    if activation is None:
        xp.maximum(a, 0, out=a)  # [b, s, p]  ReLU
    else:
        a = activation(a)  # [b, s, p]
    if parts is not None:
        parts.update(mlp_in=x, act=a)
    out = a @ layer.w_l2  # [b, s, h]
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
    act: Array  # [b, s, p]  ReLU(Norm^MLP(X'_n) W_l1 + b_l1) (the MLP output is act @ W_l2 + b_l2)


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
    y = mha(layer, rms_norm(x, layer.norm_mha, model.norm_eps), model.causal, parts)  # [b, s, h]  new
    y += x  # [b, s, h]  X' = X + MHA(Norm(X))
    z = mlp(layer, rms_norm(y, layer.norm_mlp, model.norm_eps), parts, activation)  # [b, s, h]  new
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
    """``X_1 = I + P``: token ids [b, s] (or real inputs [b, s, h]) -> [b, s, h] (:func:`input_rows`)."""
    inp = input_rows(model, x)  # [b, s, h]
    return inp + model.pos[: inp.shape[1]]  # [b, s, h]


def _batched(model: Model, x):
    """Add a batch axis to unbatched input; returns (x, was_unbatched)."""
    xp = model.xp
    x = xp.asarray(x)
    unbatched = x.ndim == (1 if model.embed is not None else 2)
    return (x[None] if unbatched else x), unbatched


def forward(model: Model, x):
    """``Output = X_{N+1} W_out``.

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
    out = X @ model.w_out  # [b, s, o]
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
        Elementwise function replacing ReLU in every MLP (array [b, s, p] -> [b, s, p]), for
        claims that hold for any activation (proofs/); None is the paper's ReLU.
    """
    xb, unbatched = _batched(model, x)
    inp = input_rows(model, xb)  # I [b, s, h]
    X = inp + model.pos[: inp.shape[1]]  # X_1 [b, s, h]  (as embed_inputs)
    streams = [X]
    layers: list[LayerTrace] = []
    for layer in model.layers:
        X = block(model, layer, X, layers, activation)  # X_{n+1} [b, s, h]
        streams.append(X)
    out = X @ model.w_out  # [b, s, o]
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

"""An independent, deliberately naive implementation of docs/spec.md sections 1 and 4.1 for the tests.

Loops over batch entries, heads, positions and elements, and follows the spec's formulas
literally: heads in paper order, ``W_O`` as one stacked matrix, every norm row by row, every
activation element by element with :mod:`math` (``gelu`` through ``math.erf``), RoPE pair by
pair with ``math.cos``/``math.sin``, grouped-query attention as "query head ``j`` reads
key/value head ``floor(j / (E / kv_heads))``", whose tensors are those stored with the first
head of its group. It shares no code with ``fpt_ref.forward`` (it reads the model's fields
only: ``arch``, the tensors, ``norm_eps``, ``causal``, ``kv_heads``).

:func:`naive_forward` is the reference output; :func:`naive_scale` the natural output scale
for tolerances (the largest sum of absolute values of the terms of one output entry, with
every norm's ``1 / rms`` applied to the magnitudes it divides).
"""

import math

import numpy as np


def _relu(a):
    return a if a > 0.0 else 0.0


def _gelu(a):
    return 0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0)))


def _gelu_tanh(a):
    return 0.5 * a * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a * a * a)))


def _silu(a):
    if a >= 0.0:
        return a / (1.0 + math.exp(-a))
    e = math.exp(a)  # a / (1 + exp(-a)) without overflow for very negative a
    return a * e / (1.0 + e)


#: ``Arch.act`` -> the scalar function of docs/spec.md section 4.1
SCALAR_ACTIVATIONS = {"relu": _relu, "gelu": _gelu, "gelu_tanh": _gelu_tanh, "silu": _silu}


def elementwise(fn, A):
    """``fn`` applied to every element of ``A`` (a Python loop); same shape and dtype."""
    out = np.empty_like(A)
    for idx in np.ndindex(*A.shape):
        out[idx] = fn(float(A[idx]))
    return out


def naive_forward(model, x, activation=None, group=None, rope_layout=None):
    """Output [b, s, o] (or [s, o]) of docs/spec.md sections 1 and 4.1.

    ``activation`` (an array function) replaces the model's activation when given.
    ``group`` (a function ``(j, E, G) -> g``) and ``rope_layout`` replace the spec's group
    mapping and the model's RoPE layout: the tests use them to show what a forward pass with
    that mistake would compute.
    """
    return _run(model, x, activation, group, rope_layout)[0]


def naive_scale(model, x):
    """The natural output scale ``S`` of ``model`` on ``x`` (a float; the magnitudes of :func:`naive_forward`).

    The residual stream is a sum of terms (input, positions, every branch output); ``M`` is
    the sum of their absolute values, entry by entry: ``M_1 = |I| + |P|``, then per layer
    ``M += |H| |W_O| + |b_o|`` and ``M += |A| |W_l2| + |b_l2|`` (``H`` the heads' outputs,
    ``A`` the input of ``W_l2``). The output's scale is ``max |Z| |W_out|`` where ``Z`` is
    ``M`` or, behind a final norm, ``|g| (M + mean M) / sqrt(var + eps) + |beta|`` per row
    (``M`` alone for RMSNorm): a rounding error of the stream relative to ``M`` is divided
    by the norm's denominator like the stream itself.
    """
    return _run(model, x, None, None, None)[1]


def _run(model, x, activation, group, rope_layout):
    arch = model.arch
    if activation is None:
        scalar = SCALAR_ACTIVATIONS[arch.act]

        def act(A):
            return elementwise(scalar, A)
    else:
        act = activation
    layout = arch.rope_layout if rope_layout is None else rope_layout
    x = np.asarray(x)
    tokens = model.embed is not None
    single = x.ndim == (1 if tokens else 2)
    if single:
        x = x[None]
    w_out = np.asarray(model.embed).T if arch.tied else np.asarray(model.w_out)  # [h, o]
    outs, scale = [], 0.0
    for b in range(x.shape[0]):
        s = x.shape[1]
        X = np.asarray(model.embed)[x[b]] if tokens else np.asarray(x[b], dtype=model.dtype)  # [s, h]
        M = np.abs(X)  # [s, h]
        if arch.positions == "learned":
            X = X + np.asarray(model.pos)[:s]
            M = M + np.abs(np.asarray(model.pos)[:s])
        for L in model.layers:
            Xn = _norm(X, L.norm_mha, L.norm_mha_b, model.norm_eps, arch.norm)
            H, W_O = _heads(L, Xn, model.causal, arch, group, layout)  # [s, sum v], [sum v, h]
            X = X + H @ W_O
            M = M + np.abs(H) @ np.abs(W_O)
            if L.b_o is not None:
                X, M = X + L.b_o, M + np.abs(L.b_o)
            Xn = _norm(X, L.norm_mlp, L.norm_mlp_b, model.norm_eps, arch.norm)
            up = Xn @ L.w_l1 if L.b_l1 is None else Xn @ L.w_l1 + L.b_l1  # [s, p]
            if L.w_gate is None:
                A = act(up)
            else:
                gate = Xn @ L.w_gate if L.b_gate is None else Xn @ L.w_gate + L.b_gate  # [s, p]
                A = act(gate) * up
            X = X + A @ L.w_l2
            M = M + np.abs(A) @ np.abs(L.w_l2)
            if L.b_l2 is not None:
                X, M = X + L.b_l2, M + np.abs(L.b_l2)
        if model.final_norm is not None:
            Z = _norm_magnitude(X, M, model.final_norm, model.final_norm_b, model.norm_eps, arch.norm)
            X = _norm(X, model.final_norm, model.final_norm_b, model.norm_eps, arch.norm)
        else:
            Z = M
        outs.append(X @ w_out)
        if Z.size:
            scale = max(scale, float(np.max(Z @ np.abs(w_out))))
    out = np.stack(outs)
    return (out[0] if single else out), scale


def _norm(X, g, beta, eps, kind):
    """RMSNorm or LayerNorm of every row of X [s, h] (docs/spec.md section 4.1)."""
    h = X.shape[1]
    out = np.empty_like(X)
    for i in range(X.shape[0]):
        row = X[i]
        if kind == "layer":
            mu = sum(float(c) for c in row) / h
            var = sum((float(c) - mu) ** 2 for c in row) / h
            out[i] = g * (row - mu) / math.sqrt(var + eps) + beta
        else:
            ms = sum(float(c) ** 2 for c in row) / h
            out[i] = row * g / math.sqrt(ms + eps)
    return out


def _norm_magnitude(X, M, g, beta, eps, kind):
    """``|g| (M [+ mean M]) / sqrt(var + eps) [+ |beta|]`` row by row (:func:`naive_scale`)."""
    h = X.shape[1]
    out = np.empty_like(M)
    for i in range(X.shape[0]):
        row = X[i]
        if kind == "layer":
            mu = sum(float(c) for c in row) / h
            var = sum((float(c) - mu) ** 2 for c in row) / h
            out[i] = np.abs(g) * (M[i] + np.mean(M[i])) / math.sqrt(var + eps) + np.abs(beta)
        else:
            ms = sum(float(c) ** 2 for c in row) / h
            out[i] = np.abs(g) * M[i] / math.sqrt(ms + eps)
    return out


def _rope(Y, theta, layout):
    """Rotate every row ``m`` of Y [s, k] pair by pair by the angles ``m theta^(-2i/k)``."""
    s, k = Y.shape
    out = Y.copy()
    for m in range(s):
        for i in range(k // 2):
            a, b = (i, i + k // 2) if layout == "half" else (2 * i, 2 * i + 1)
            angle = m * theta ** (-2.0 * i / k)
            c, sn = math.cos(angle), math.sin(angle)
            out[m, a] = Y[m, a] * c - Y[m, b] * sn
            out[m, b] = Y[m, b] * c + Y[m, a] * sn
    return out


def _heads(L, X, causal, arch, group, layout):
    """Every head's output ``H_j`` [s, v_j], concatenated, and the stacked ``W_O``."""
    s = X.shape[0]
    E = len(L.heads)
    G = E if L.kv_heads is None else int(L.kv_heads)
    r = E // G
    kv_of = (lambda j, E, G: j // (E // G)) if group is None else group
    rope = arch.positions == "rope"
    Hs = []
    for j, hd in enumerate(L.heads):
        kv = L.heads[kv_of(j, E, G) * r]  # key/value head g is stored with the first head of group g
        Q = X @ hd.w_q if hd.b_q is None else X @ hd.w_q + hd.b_q  # [s, k]
        K = X @ kv.w_k if kv.b_k is None else X @ kv.w_k + kv.b_k  # [s, k]
        V = X @ kv.w_v if kv.b_v is None else X @ kv.w_v + kv.b_v  # [s, v]
        if rope:
            Q, K = _rope(Q, arch.rope_theta, layout), _rope(K, arch.rope_theta, layout)
        z = Q @ K.T / np.sqrt(hd.w_q.shape[1])  # [s, s]
        if causal:
            z = np.where(np.arange(s)[None, :] <= np.arange(s)[:, None], z, -np.inf)
        a = np.exp(z - z.max(axis=1, keepdims=True))
        Hs.append((a / a.sum(axis=1, keepdims=True)) @ V)
    W_O = np.concatenate([hd.w_o for hd in L.heads], axis=0)  # [sum v, h]
    return np.concatenate(Hs, axis=1), W_O

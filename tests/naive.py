"""An independent, deliberately naive implementation of docs/spec.md section 1 for the tests.

Loops over batch entries and heads, and follows the paper's equations literally (heads in
paper order, ``W_O`` as one stacked matrix, the norm as ``x g / sqrt(mean(x^2) + eps)``).
It shares no code with ``fpt_ref.forward``.
"""

import numpy as np


def naive_forward(model, x, activation=None):
    """Output [b, s, o] (or [s, o]); ``activation`` replaces ReLU when given."""
    f = (lambda a: np.maximum(a, 0.0)) if activation is None else activation
    x = np.asarray(x)
    tokens = model.embed is not None
    single = x.ndim == (1 if tokens else 2)
    if single:
        x = x[None]
    outs = []
    for b in range(x.shape[0]):
        s = x.shape[1]
        X = (np.asarray(model.embed)[x[b]] if tokens else x[b]) + np.asarray(model.pos)[:s]
        for L in model.layers:
            X = X + _mha(L, _norm(X, L.norm_mha, model.norm_eps), model.causal)
            Xn = _norm(X, L.norm_mlp, model.norm_eps)
            X = X + f(Xn @ L.w_l1 + L.b_l1) @ L.w_l2 + L.b_l2
        outs.append(X @ model.w_out)
    out = np.stack(outs)
    return out[0] if single else out


def _norm(X, g, eps):
    h = X.shape[1]
    return X * g / np.sqrt((X**2).sum(axis=1, keepdims=True) / h + eps)


def _mha(L, X, causal):
    s = X.shape[0]
    Hs = []
    for hd in L.heads:
        Q, K, V = X @ hd.w_q, X @ hd.w_k, X @ hd.w_v
        z = Q @ K.T / np.sqrt(hd.w_q.shape[1])
        if causal:
            z = np.where(np.arange(s)[None, :] <= np.arange(s)[:, None], z, -np.inf)
        a = np.exp(z - z.max(axis=1, keepdims=True))
        Hs.append((a / a.sum(axis=1, keepdims=True)) @ V)
    W_O = np.concatenate([hd.w_o for hd in L.heads], axis=0)
    return np.concatenate(Hs, axis=1) @ W_O

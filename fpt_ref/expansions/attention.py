"""Attention expansion (paper Definition/Theorem 3.4)."""

from __future__ import annotations

import math
from dataclasses import replace

from ..model import Model
from ..names import tensor_name
from ._common import Builder, check_grows, finish, head_indices, layer_indices


def expand_attention(
    model: Model, k: int, layers=None, heads=None, *, scale="W_K", init="normal", seed=0, return_manifest=False
):
    """Grow the key/query size ``k -> k^`` of the chosen heads (paper section 3.4).

    With ``scale="W_K"`` (the paper's choice):
    ``W_Q,e -> [W_Q,e  M_Q,e]``, ``W_K,e -> [sqrt(k^/k) W_K,e  M_K,e]`` (both h x k^).
    Constrained: ``M_K,e = 0`` and the scaling of ``W_K,e`` by ``sqrt(k^/k)``. Free: ``M_Q,e``.

    With ``scale="W_Q"`` (the mirror image, docs/spec.md trap 3): ``W_Q,e`` is scaled, ``M_Q,e = 0``
    and ``M_K,e`` is free. Either way ``Q^ K^T`` keeps only the old products, multiplied by
    ``sqrt(k^/k)``, and ``sqrt(k^/k) / sqrt(k^) = 1 / sqrt(k)`` restores the temperature.

    Parameters
    ----------
    model : Model
    k : int
        New key/query size ``k^``; must exceed each chosen head's current ``k``.
    layers, heads : selections as in :func:`fpt_ref.expand_heads`.
    scale : {"W_K", "W_Q"}
        Which projection carries the ``sqrt(k^/k)`` scaling (its new columns are the zero ones).
    init, seed, return_manifest : see :func:`fpt_ref.expand_mlp`.

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> big, manifest = expand_attention(model, 8, layers=1, return_manifest=True)
    >>> for block in manifest:
    ...     print(block)
    layers.1.heads.0.w_q[0:4, 0:2] copied (W_Q,e)
    layers.1.heads.0.w_q[0:4, 2:8] free (M_Q)
    layers.1.heads.0.w_k[0:4, 0:2] scaled x2.0 (W_K,e)
    layers.1.heads.0.w_k[0:4, 2:8] zero (M_K)
    >>> fpt_ref.verify(model, big)["ok"]
    True
    """
    if scale not in ("W_K", "W_Q"):
        raise ValueError(f"scale: must be 'W_K' or 'W_Q', got {scale!r}")
    chosen = layer_indices(model, layers)
    b = Builder(model, "attention", init, seed)
    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        new_heads = list(L.heads)
        for e in head_indices(model, n, heads):
            H = L.heads[e]
            k_new = check_grows("k", k, H.k, f"head {e} of layer {n}")
            d = k_new - H.k
            factor = math.sqrt(k_new / H.k)
            if scale == "W_K":
                q_parts = [b.copied(H.w_q), b.free("M_Q", (model.h, d), H.w_q)]
                k_parts = [b.scaled(H.w_k, factor), b.zeros("M_K", (model.h, d))]
            else:
                q_parts = [b.scaled(H.w_q, factor), b.zeros("M_Q", (model.h, d))]
                k_parts = [b.copied(H.w_k), b.free("M_K", (model.h, d), H.w_k)]
            w_q = b.concat(tensor_name("w_q", n, e), q_parts, axis=1)  # [h, k^]
            w_k = b.concat(tensor_name("w_k", n, e), k_parts, axis=1)  # [h, k^]
            new_heads[e] = replace(H, w_q=w_q, w_k=w_k)
        new_layers[n] = replace(L, heads=tuple(new_heads))
    return finish(replace(model, layers=tuple(new_layers)), b.blocks, return_manifest)

"""Attention expansion (paper Definition/Theorem 3.4)."""

from __future__ import annotations

import math
from dataclasses import replace

from ..model import Model
from ..names import tensor_name
from ._common import Builder, check_grows, finish, group_indices, layer_indices


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
    selection = {n: group_indices(model, n, heads) for n in chosen}
    arch = model.arch
    rope = arch.positions == "rope"
    if rope:
        _check_rope(model, k, selection)
    b = Builder(model, "attention", init, seed)
    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        r = L.group_size
        new_heads = list(L.heads)
        for g in selection[n]:
            lead = g * r
            H = L.heads[lead]
            where = f"head {lead} of layer {n}" if r == 1 else f"group {g} (heads {lead}..{lead + r - 1}) of layer {n}"
            k_new = check_grows("k", k, H.k, where)
            d = k_new - H.k
            factor = math.sqrt(k_new / H.k)

            def grow(arr, scaled: bool, block: str, name: str, factor=factor, d=d):
                """Old block (copied or scaled) and its new columns (zero on the scaled side, free on
                the other), placed as RoPE's pairs require ([old | new], or for the rotate-half
                layout [old first half | new half | old second half | new half])."""
                shape = arr.shape[:-1]
                old = b.scaled(arr, factor) if scaled else b.copied(arr)

                def new(width):
                    return b.zeros(block, shape + (width,)) if scaled else b.free(block, shape + (width,), arr)

                if rope and arch.rope_layout == "half":
                    half = arr.shape[-1] // 2
                    first = b.scaled(arr[..., :half], factor) if scaled else b.copied(arr[..., :half])
                    second = b.scaled(arr[..., half:], factor) if scaled else b.copied(arr[..., half:])
                    parts = [first, new(d // 2), second, new(d // 2)]
                else:
                    parts = [old, new(d)]
                return b.concat(name, parts, axis=arr.ndim - 1)

            scale_k = scale == "W_K"
            own = {}
            for e in range(lead, lead + r):
                He = L.heads[e]
                own[e] = {"w_q": grow(He.w_q, not scale_k, "M_Q", tensor_name("w_q", n, e))}  # [h, k^]
                if e == lead:  # the group's shared keys, after its first query (file order)
                    shared = {"w_k": grow(H.w_k, scale_k, "M_K", tensor_name("w_k", n, lead))}  # [h, k^]
                if He.b_q is not None:
                    own[e]["b_q"] = grow(He.b_q, not scale_k, "m_b_Q", tensor_name("b_q", n, e))  # [k^]
                if e == lead and H.b_k is not None:
                    shared["b_k"] = grow(H.b_k, scale_k, "m_b_K", tensor_name("b_k", n, lead))  # [k^]
            for e in range(lead, lead + r):
                new_heads[e] = replace(L.heads[e], **own[e], **shared)
        new_layers[n] = replace(L, heads=tuple(new_heads))
    out = replace(model, layers=tuple(new_layers))
    if rope:  # theta' = theta^(k^/k): the old pairs keep their frequencies
        k_old = model.layers[0].heads[0].k
        out = replace(out, arch=arch.replace(rope_theta=arch.rope_theta ** (int(k) / k_old)))
    return finish(out, b.blocks, return_manifest)


def _check_rope(model: Model, k, selection: dict) -> None:
    """RoPE key growth is exact only for every head at once, from one even ``k`` to one even ``k^``."""
    sizes = {H.k for L in model.layers for H in L.heads}
    every = len(selection) == model.N and all(len(g) == model.layers[n].G for n, g in selection.items())
    if not every:
        raise ValueError(
            "heads: RoPE's base theta is shared by every head, and growing the key size changes it "
            "(theta -> theta^(k^/k)); grow every head of every layer at once"
        )
    if len(sizes) != 1:
        raise ValueError(
            f"k: RoPE key growth changes the shared base theta by the ratio k^/k, so every head needs one key "
            f"size; this model has {sorted(sizes)}"
        )
    if int(k) % 2:
        raise ValueError(f"k: RoPE rotates pairs of dimensions, so the key size must be even, got {k}")

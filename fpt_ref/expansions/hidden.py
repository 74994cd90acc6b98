"""Hidden dimension expansion (paper Definition/Theorem 3.5)."""

from __future__ import annotations

import math
from dataclasses import replace

from ..model import Head, Layer, Model
from ..names import tensor_name
from ._common import Builder, check_grows, finish


def expand_hidden(model: Model, h: int, *, init="normal", seed=0, return_manifest=False):
    """Grow the hidden size ``h -> h^`` of the whole model (paper section 3.5).

    Constrained (new columns, zero): ``embed`` (``M_I``), ``pos`` (``M_P``), every ``W_O,e``,
    ``W_l2`` and ``b_l2``. Scaled: every gain vector ``g`` by ``sqrt(h/h^)``, and ``norm_eps``
    by ``h/h^`` (docs/spec.md trap 2: exact only with this rescaling when ``eps > 0``).
    Free: the new entries of every ``g``; the new rows of ``W_out``, ``W_l1`` and every
    ``W_Q,e``, ``W_K,e``, ``W_V,e``.

    By induction every residual stream is ``[X_n, 0]``; the RMS over ``h^`` entries is
    ``sqrt(h/h^)`` times the RMS over ``h``, which the gain scaling cancels.

    Parameters
    ----------
    model : Model
    h : int
        New hidden size ``h^ > h``.
    init, seed, return_manifest : see :func:`fpt_ref.expand_mlp`.

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4, eps=1e-6)
    >>> big, manifest = expand_hidden(model, 6, return_manifest=True)
    >>> big.h, big.norm_eps == model.norm_eps * 4 / 6
    (6, True)
    >>> sorted({block.block for block in manifest if block.role == "zero"})
    ['M_O', 'M_P', 'M_l2', 'm_b_l2']
    >>> fpt_ref.verify(model, big)["ok"]
    True
    """
    h_new = check_grows("h", h, model.h, "the model")
    d = h_new - model.h
    f = math.sqrt(model.h / h_new)
    b = Builder(model, "hidden", init, seed)

    def zero_cols(name, block, arr):  # new zero columns / entries on the last axis
        return b.concat(name, [b.copied(arr), b.zeros(block, arr.shape[:-1] + (d,))], axis=arr.ndim - 1)

    def rows(name, block, arr):  # new free rows
        return b.concat(name, [b.copied(arr), b.free(block, (d,) + arr.shape[1:], arr)], axis=0)

    def gain(name, g):  # g * sqrt(h/h^), then free entries m_g
        scaled = b.scaled(g, f)
        return b.concat(name, [scaled, b.free("m_g", (d,), scaled.array)], axis=0)

    embed = None if model.embed is None else zero_cols("embed", "M_I", model.embed)  # [vocab, h^]  M_I = 0
    pos = zero_cols("pos", "M_P", model.pos)  # [s_max, h^]  M_P = 0
    w_out = rows("w_out", "M_out", model.w_out)  # [h^, o]
    layers = []
    for n, L in enumerate(model.layers):
        heads = tuple(
            Head(
                w_q=rows(tensor_name("w_q", n, e), "M_Q", H.w_q),  # [h^, k]
                w_k=rows(tensor_name("w_k", n, e), "M_K", H.w_k),  # [h^, k]
                w_v=rows(tensor_name("w_v", n, e), "M_V", H.w_v),  # [h^, v]
                w_o=zero_cols(tensor_name("w_o", n, e), "M_O", H.w_o),  # [v, h^]  M_O = 0
            )
            for e, H in enumerate(L.heads)
        )
        layers.append(
            Layer(
                norm_mha=gain(tensor_name("norm_mha", n), L.norm_mha),  # [h^]
                heads=heads,
                norm_mlp=gain(tensor_name("norm_mlp", n), L.norm_mlp),  # [h^]
                w_l1=rows(tensor_name("w_l1", n), "M_l1", L.w_l1),  # [h^, p]
                b_l1=L.b_l1,  # [p]  unchanged
                w_l2=zero_cols(tensor_name("w_l2", n), "M_l2", L.w_l2),  # [p, h^]  M_l2 = 0
                b_l2=zero_cols(tensor_name("b_l2", n), "m_b_l2", L.b_l2),  # [h^]  m_b_l2 = 0
            )
        )
    out = replace(
        model, embed=embed, pos=pos, w_out=w_out, layers=tuple(layers), norm_eps=model.norm_eps * model.h / h_new
    )
    return finish(out, b.blocks, return_manifest)

"""Hidden dimension expansion (paper Definition/Theorem 3.5)."""

from __future__ import annotations

import math
from dataclasses import replace

from ..model import Model
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

    Real-architecture blocks (docs/spec.md section 4.2): the final norm's gain is scaled like
    every gain; new ``b_o`` entries (``m_b_O``) are zero like ``m_b_l2``; new ``W_gate`` rows
    (``M_gate``) are free; ``b_q``, ``b_k``, ``b_v`` are unchanged; a grouped layer's shared
    ``W_K``, ``W_V`` grow once. With LayerNorm, zero padding is not exact: every writer of
    the stream (``embed``, ``pos``, ``W_O,e``, ``b_o``, ``W_l2``, ``b_l2``) gets new columns
    equal to the row mean of its old ones (role ``mean``), so every stream is ``[X, mu 1]``,
    whose mean is ``mu`` and variance ``h/h^`` times the old; the new LayerNorm bias entries
    (``m_beta``) are zero; without a final norm the new rows of ``W_out`` are zero too. LayerNorm
    with a tied output and no final norm has no exact recipe (``ValueError``).

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
    arch = model.arch
    layer_norm = arch.norm == "layer"
    if layer_norm and arch.tied and not arch.final_norm:
        raise ValueError(
            "h: no exact hidden growth for LayerNorm with a tied output and no final norm: the new stream "
            "columns hold the row mean (mean padding), and the tied output rows (the embedding's new columns) "
            "cannot be zero"
        )
    d = h_new - model.h
    f = math.sqrt(model.h / h_new)
    b = Builder(model, "hidden", init, seed)

    def writer(name, block, arr):  # new columns / entries on the last axis: zero, or the row mean (LayerNorm)
        new = b.mean(block, arr, d) if layer_norm else b.zeros(block, arr.shape[:-1] + (d,))
        return b.concat(name, [b.copied(arr), new], axis=arr.ndim - 1)

    def rows(name, block, arr, zero=False):  # new free (or zero) rows
        new = b.zeros(block, (d,) + arr.shape[1:]) if zero else b.free(block, (d,) + arr.shape[1:], arr)
        return b.concat(name, [b.copied(arr), new], axis=0)

    def gain(name, g):  # g * sqrt(h/h^), then free entries m_g
        scaled = b.scaled(g, f)
        return b.concat(name, [scaled, b.free("m_g", (d,), scaled.array)], axis=0)

    def beta(name, arr):  # LayerNorm bias: new entries zero (the new normed entries are then 0)
        return None if arr is None else b.concat(name, [b.copied(arr), b.zeros("m_beta", (d,))], axis=0)

    embed = None if model.embed is None else writer("embed", "M_I", model.embed)  # [vocab, h^]
    pos = None if model.pos is None else writer("pos", "M_P", model.pos)  # [s_max, h^]
    # without a final norm a LayerNorm stream's new columns (the row mean) reach W_out: its new rows are zero
    w_out = None if model.w_out is None else rows("w_out", "M_out", model.w_out, layer_norm and not arch.final_norm)
    final = None if model.final_norm is None else gain("final_norm", model.final_norm)  # [h^]
    final_b = beta("final_norm_b", model.final_norm_b)  # [h^]
    layers = []
    for n, L in enumerate(model.layers):
        heads: list = []
        for e, H in enumerate(L.heads):
            w_q = rows(tensor_name("w_q", n, e), "M_Q", H.w_q)  # [h^, k]  (drawn first)
            lead = L.leader(e)
            if lead == e:
                kv = {
                    "w_k": rows(tensor_name("w_k", n, e), "M_K", H.w_k),  # [h^, k]
                    "w_v": rows(tensor_name("w_v", n, e), "M_V", H.w_v),  # [h^, v]
                }
            else:  # the group's keys and values
                kv = {"w_k": heads[lead].w_k, "w_v": heads[lead].w_v}
            w_o = writer(tensor_name("w_o", n, e), "M_O", H.w_o)  # [v, h^]
            heads.append(replace(H, w_q=w_q, w_o=w_o, **kv))
        layers.append(
            replace(
                L,
                norm_mha=gain(tensor_name("norm_mha", n), L.norm_mha),  # [h^]
                norm_mha_b=beta(tensor_name("norm_mha_b", n), L.norm_mha_b),  # [h^]
                heads=tuple(heads),
                b_o=None if L.b_o is None else writer(tensor_name("b_o", n), "m_b_O", L.b_o),  # [h^]
                norm_mlp=gain(tensor_name("norm_mlp", n), L.norm_mlp),  # [h^]
                norm_mlp_b=beta(tensor_name("norm_mlp_b", n), L.norm_mlp_b),  # [h^]
                w_gate=None if L.w_gate is None else rows(tensor_name("w_gate", n), "M_gate", L.w_gate),  # [h^, p]
                w_l1=rows(tensor_name("w_l1", n), "M_l1", L.w_l1),  # [h^, p]
                w_l2=writer(tensor_name("w_l2", n), "M_l2", L.w_l2),  # [p, h^]
                b_l2=None if L.b_l2 is None else writer(tensor_name("b_l2", n), "m_b_l2", L.b_l2),  # [h^]
            )
        )
    out = replace(
        model,
        embed=embed,
        pos=pos,
        w_out=w_out,
        final_norm=final,
        final_norm_b=final_b,
        layers=tuple(layers),
        norm_eps=model.norm_eps * model.h / h_new,
    )
    return finish(out, b.blocks, return_manifest)

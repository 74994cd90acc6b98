"""Heads expansion (paper Definition/Theorem 3.3)."""

from __future__ import annotations

from dataclasses import replace

from ..model import Model
from ..names import tensor_name
from ._common import Builder, check_grows, finish, group_indices, layer_indices


def expand_heads(model: Model, v: int, layers=None, heads=None, *, init="normal", seed=0, return_manifest=False):
    """Grow the value size ``v -> v^`` of the chosen heads (paper section 3.3).

    ``W_V,e -> [W_V,e  M_V,e]`` (h x v^), ``W_O,e -> [[W_O,e], [M_O,e]]`` (v^ x h).

    Constrained: ``M_O,e = 0`` ((v^-v) x h). Free: ``M_V,e`` (h x (v^-v)) and the new entries
    of ``b_v,e`` (``m_b_V``) when the model has value biases.
    The new value columns reach the output only through the zero rows ``M_O,e``.

    In a grouped-query layer the heads of a group share ``W_V``: the selection must cover
    whole groups, the shared ``W_V`` grows once and every head of the group gets ``M_O = 0``
    (docs/spec.md section 4.2).

    Parameters
    ----------
    model : Model
    v : int
        New value size ``v^``; must exceed each chosen head's current ``v``.
    layers : int or sequence of int, optional
        Layers (default: all).
    heads : int or sequence of int, optional
        Heads within each chosen layer (default: all heads of that layer).
    init, seed, return_manifest : see :func:`fpt_ref.expand_mlp`.

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> big, manifest = expand_heads(model, 3, layers=0, return_manifest=True)
    >>> for block in manifest:
    ...     print(block)
    layers.0.heads.0.w_v[0:4, 0:2] copied (W_V,e)
    layers.0.heads.0.w_v[0:4, 2:3] free (M_V)
    layers.0.heads.0.w_o[0:2, 0:4] copied (W_O,e)
    layers.0.heads.0.w_o[2:3, 0:4] zero (M_O)
    >>> fpt_ref.verify(model, big)["ok"]
    True
    """
    chosen = layer_indices(model, layers)
    b = Builder(model, "heads", init, seed)
    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        new_heads = list(L.heads)
        r = L.group_size
        for g in group_indices(model, n, heads):
            lead = g * r
            H = L.heads[lead]
            where = f"head {lead} of layer {n}" if r == 1 else f"group {g} (heads {lead}..{lead + r - 1}) of layer {n}"
            v_new = check_grows("v", v, H.v, where)
            d = v_new - H.v
            shared = {
                "w_v": b.concat(
                    tensor_name("w_v", n, lead), [b.copied(H.w_v), b.free("M_V", (model.h, d), H.w_v)], axis=1
                )  # [h, v^]  shared by the group
            }
            if H.b_v is not None:
                shared["b_v"] = b.concat(
                    tensor_name("b_v", n, lead), [b.copied(H.b_v), b.free("m_b_V", (d,), H.b_v)], axis=0
                )  # [v^]
            for e in range(lead, lead + r):
                w_o = b.concat(
                    tensor_name("w_o", n, e), [b.copied(L.heads[e].w_o), b.zeros("M_O", (d, model.h))], axis=0
                )  # [v^, h]  M_O = 0
                new_heads[e] = replace(L.heads[e], w_o=w_o, **shared)
        new_layers[n] = replace(L, heads=tuple(new_heads))
    return finish(replace(model, layers=tuple(new_layers)), b.blocks, return_manifest)

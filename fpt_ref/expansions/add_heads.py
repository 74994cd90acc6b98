"""Head addition (paper Definition/Theorem 3.2)."""

from __future__ import annotations

from dataclasses import replace

from ..checks import check_int
from ..model import Head, Model
from ..names import head_prefix
from ._common import Builder, finish, layer_indices


def add_heads(
    model: Model,
    count: int = 1,
    layers=None,
    *,
    k=None,
    v=None,
    groups: bool = False,
    init="normal",
    seed=0,
    return_manifest=False,
):
    """Add ``count`` heads to each chosen layer (paper section 3.2, applied ``count`` times; docs/spec.md 4.2).

    New head: ``W_Q``, ``W_K`` (h x k), ``W_V`` (h x v), its biases ``b_q``, ``b_k``, ``b_v``
    when the model has them, and its block of ``W_O``, ``M_O`` (v x h).

    Constrained: ``M_O = 0``. Free: the new ``W_Q``, ``W_K``, ``W_V`` and biases.
    The new head's output is multiplied by the zero rows ``M_O`` of ``W_O``; ``b_o`` is unchanged.

    In a grouped-query layer (``kv_heads < E``) a head appended at the end would re-group
    every later head, so new heads go where the grouping stays: with ``groups=False``,
    ``count / kv_heads`` new query heads at the end of every group, reading that group's keys
    and values (only ``W_Q``, ``b_q`` new; ``k`` and ``v`` are the group's); with
    ``groups=True``, ``count / (E / kv_heads)`` whole new groups at the end, each a new
    key/value head and its query heads. Ungrouped layers append ``count`` heads either way.

    Parameters
    ----------
    model : Model
    count : int
        Heads to add per chosen layer (at least 1).
    layers : int or sequence of int, optional
        Layers to grow (default: all).
    k, v : int, optional
        Key/query and value size of the new heads (default: those of the layer's last head).
    groups : bool
        Grouped layers: add whole groups instead of heads within the groups.
    init, seed, return_manifest : see :func:`fpt_ref.expand_mlp`.

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> big, manifest = add_heads(model, layers=1, k=3, return_manifest=True)
    >>> [(head.k, head.v) for head in big.layers[1].heads]
    [(2, 2), (3, 2)]
    >>> [(block.tensor, block.role, block.block) for block in manifest][-1]
    ('layers.1.heads.1.w_o', 'zero', 'M_O')
    >>> fpt_ref.verify(model, big)["ok"]
    True
    """
    count = check_int("count", count, 1)
    chosen = layer_indices(model, layers)
    if k is not None:
        check_int("k", k, 1)
    if v is not None:
        check_int("v", v, 1)
    if not isinstance(groups, bool):
        raise TypeError(f"groups: must be a bool, got {groups!r}")
    for n in chosen:
        L = model.layers[n]
        unit = L.group_size if groups else L.G
        if L.grouped and count % unit:
            what = f"whole groups of {unit} heads" if groups else f"one head per group ({unit} groups)"
            raise ValueError(
                f"count: layer {n} is grouped (kv_heads={L.G} of {L.E} heads), so heads are added as {what}; "
                f"{count} is not a multiple of {unit}"
            )
        if L.grouped and not groups and (k is not None or v is not None):
            raise ValueError(
                "k, v: a head added within a group reads the group's keys and values; its sizes are the group's"
            )
        if model.arch.positions == "rope" and k is not None and int(k) % 2:
            raise ValueError(f"k: RoPE rotates pairs of dimensions, so the key size must be even, got {k}")
    b = Builder(model, "add_heads", init, seed)
    bias = model.arch.qkv_bias
    h = model.h
    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        ref = L.heads[-1]
        kk = ref.k if k is None else int(k)
        vv = ref.v if v is None else int(v)
        if L.grouped and not groups:  # count / G new query heads at the end of every group
            r, c = L.group_size, count // L.G
            layout: list[tuple[int | None, int | None]] = []  # (old head index or None for a new head, group)
            for g in range(L.G):
                layout += [(g * r + i, g) for i in range(r)] + [(None, g)] * c
            kv_heads = L.G
        else:  # new heads (ungrouped) or whole new groups at the end
            r = L.group_size
            layout = [(e, None) for e in range(L.E)]
            layout += [(None, None)] * count
            kv_heads = (L.G + count // r) if L.grouped else None
        heads: list = []
        for e, (old, grp) in enumerate(layout):
            if old is not None:
                heads.append(L.heads[old])
                continue
            pre = head_prefix(n, e)
            if grp is not None:  # within group grp: the group's keys and values
                lead = L.heads[grp * L.group_size]
                heads.append(
                    Head(
                        w_q=b.whole(f"{pre}.w_q", b.free("W_Q_new", (h, lead.k), lead.w_q)),  # [h, k]
                        w_k=lead.w_k,
                        w_v=lead.w_v,
                        w_o=b.whole(f"{pre}.w_o", b.zeros("M_O", (lead.v, h))),  # [v, h]  M_O = 0
                        b_q=b.whole(f"{pre}.b_q", b.free("b_Q_new", (lead.k,), lead.b_q)) if bias else None,  # [k]
                        b_k=lead.b_k,
                        b_v=lead.b_v,
                    )
                )
                continue
            leader = not L.grouped or (e - L.E) % r == 0
            w_q = b.whole(f"{pre}.w_q", b.free("W_Q_new", (h, kk), ref.w_q))  # [h, k]  (drawn first)
            if leader:
                kv = {
                    "w_k": b.whole(f"{pre}.w_k", b.free("W_K_new", (h, kk), ref.w_k)),  # [h, k]
                    "w_v": b.whole(f"{pre}.w_v", b.free("W_V_new", (h, vv), ref.w_v)),  # [h, v]
                }
            else:  # a later head of a new group reads its leader's keys and values
                first = heads[e - (e - L.E) % r]
                kv = {kind: getattr(first, kind) for kind in ("w_k", "w_v", "b_k", "b_v")}
            w_o = b.whole(f"{pre}.w_o", b.zeros("M_O", (vv, h)))  # [v, h]  M_O = 0
            if bias:
                kv["b_q"] = b.whole(f"{pre}.b_q", b.free("b_Q_new", (kk,), ref.b_q))  # [k]
                if leader:
                    kv["b_k"] = b.whole(f"{pre}.b_k", b.free("b_K_new", (kk,), ref.b_k))  # [k]
                    kv["b_v"] = b.whole(f"{pre}.b_v", b.free("b_V_new", (vv,), ref.b_v))  # [v]
            heads.append(Head(w_q=w_q, w_o=w_o, **kv))
        new_layers[n] = replace(L, heads=tuple(heads), kv_heads=kv_heads)
    return finish(replace(model, layers=tuple(new_layers)), b.blocks, return_manifest)

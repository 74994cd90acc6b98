"""Head addition (paper Definition/Theorem 3.2)."""

from __future__ import annotations

from dataclasses import replace

from ..checks import check_int
from ..model import Head, Model
from ..names import head_prefix
from ._common import Builder, finish, layer_indices


def add_heads(
    model: Model, count: int = 1, layers=None, *, k=None, v=None, init="normal", seed=0, return_manifest=False
):
    """Add ``count`` heads to each chosen layer (paper section 3.2, applied ``count`` times).

    New head: ``W_Q``, ``W_K`` (h x k), ``W_V`` (h x v) and its block of ``W_O``, ``M_O`` (v x h).

    Constrained: ``M_O = 0``. Free: the new ``W_Q``, ``W_K``, ``W_V``.
    The new head's output is multiplied by the zero rows ``M_O`` of ``W_O``.

    Parameters
    ----------
    model : Model
    count : int
        Heads to add per chosen layer (at least 1).
    layers : int or sequence of int, optional
        Layers to grow (default: all).
    k, v : int, optional
        Key/query and value size of the new heads (default: those of the layer's last head).
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
    b = Builder(model, "add_heads", init, seed)
    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        ref = L.heads[-1]
        kk = ref.k if k is None else int(k)
        vv = ref.v if v is None else int(v)
        heads = list(L.heads)
        for _ in range(count):
            pre = head_prefix(n, len(heads))
            heads.append(
                Head(
                    w_q=b.whole(f"{pre}.w_q", b.free("W_Q_new", (model.h, kk), ref.w_q)),  # [h, k]
                    w_k=b.whole(f"{pre}.w_k", b.free("W_K_new", (model.h, kk), ref.w_k)),  # [h, k]
                    w_v=b.whole(f"{pre}.w_v", b.free("W_V_new", (model.h, vv), ref.w_v)),  # [h, v]
                    w_o=b.whole(f"{pre}.w_o", b.zeros("M_O", (vv, model.h))),  # [v, h]  M_O = 0
                )
            )
        new_layers[n] = replace(L, heads=tuple(heads))
    return finish(replace(model, layers=tuple(new_layers)), b.blocks, return_manifest)

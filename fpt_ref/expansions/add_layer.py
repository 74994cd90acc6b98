"""Layer addition (paper Definition/Theorem 3.6)."""

from __future__ import annotations

from dataclasses import replace

from ..checks import check_int
from ..deprecation import renamed
from ..model import Head, Layer, Model
from ..names import tensor_name
from ._common import Builder, finish


@renamed(heads="n_heads")
def add_layer(
    model: Model,
    at: int,
    *,
    p=None,
    n_heads=None,
    k=None,
    v=None,
    count: int = 1,
    kv_heads=None,
    init="normal",
    seed=0,
    return_manifest=False,
):
    """Insert ``count`` new layers at position ``at`` in ``0..N`` (paper section 3.6).

    Constrained: each new layer's ``W_O`` (every head's block), ``W_l2`` and ``b_l2`` are zero,
    and ``b_o`` when the model has it (docs/spec.md section 4.2), so both residual branches add
    zero and the layer is the identity.
    Free: both gain vectors (and LayerNorm biases), every ``W_Q,e``, ``W_K,e``, ``W_V,e`` (and
    their biases), ``W_l1``, ``b_l1``, and a gated MLP's ``W_gate``, ``b_gate``.

    Parameters
    ----------
    model : Model
    at : int
        Position of the first new layer; layers ``at..N-1`` move up by ``count``.
    p, n_heads, k, v : int, optional
        Dimensions of the new layers. Defaults come from the layer they follow (layer ``at-1``;
        layer 0 when ``at == 0``): its ``p``, its heads' ``(k, v)``. ``n_heads`` (a count) gives
        that many heads of that layer's first head's ``(k, v)``; ``k`` / ``v`` set every head's.
        A model with no layers needs all four. ``heads=`` is the deprecated name of ``n_heads``.
    count : int
        Number of layers inserted (default 1), all of the same dimensions, at
        ``at, at+1, ..., at+count-1``; each is an identity layer, so the result is what
        ``count`` single insertions give, and the manifest lists the blocks of all of them.
    kv_heads : int, optional
        Key/value heads of the new layers (grouped-query attention; it must divide their
        number of heads). Default: that of the layer they follow when ``n_heads`` is not
        given, else one per head.
    init, seed, return_manifest : see :func:`fpt_ref.expand_mlp`.

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> big, manifest = add_layer(model, 1, p=5, return_manifest=True)
    >>> big.N, big.layers[1].p
    (3, 5)
    >>> [block.block for block in manifest if block.role == "zero"]
    ['W_O', 'W_l2', 'b_l2']
    >>> fpt_ref.verify(model, big)["ok"]
    True
    >>> add_layer(model, 2, n_heads=3, count=2).N
    4
    """
    at = check_int("at", at, 0)
    if at > model.N:
        raise ValueError(f"at: position {at} is out of range 0..{model.N} for a model with N={model.N} layers")
    for name, val in (("p", p), ("n_heads", n_heads), ("k", k), ("v", v)):
        if val is not None:
            check_int(name, val, 1)
    count = check_int("count", count, 1)
    xp, h = model.xp, model.h
    if model.N == 0:
        if None in (p, n_heads, k, v):
            raise ValueError(
                "p, n_heads, k, v: a model with no layers has no layer to copy dimensions from; give all four"
            )
        ones = xp.ones((h,), dtype=model.dtype)
        ref = None
    else:
        ref = model.layers[at - 1 if at > 0 else 0]
    if ref is None:  # a model with no layers: all four are given (checked above)
        p, kv = int(p), [(int(k), int(v))] * int(n_heads)
    else:
        p = ref.p if p is None else int(p)
        if n_heads is None:
            kv = [(hd.k if k is None else int(k), hd.v if v is None else int(v)) for hd in ref.heads]
        else:
            kv = [(ref.heads[0].k if k is None else int(k), ref.heads[0].v if v is None else int(v))] * int(n_heads)

    if kv_heads is None:
        G = ref.G if ref is not None and n_heads is None else len(kv)
    else:
        G = check_int("kv_heads", kv_heads, 1)
    if len(kv) % G:
        raise ValueError(f"kv_heads: {G} key/value heads do not divide the new layer's {len(kv)} heads")
    r = len(kv) // G
    if any(kv[e] != kv[e - e % r] for e in range(len(kv))):
        raise ValueError("kv_heads: the heads of a group share keys and values, so they need equal (k, v)")
    if model.arch.positions == "rope" and any(ke % 2 for ke, _ in kv):
        raise ValueError("k: RoPE rotates pairs of dimensions, so the key size must be even")
    arch = model.arch
    b = Builder(model, "add_layer", init, seed)

    def like(e, name):
        if ref is None:
            return None
        return getattr(ref.heads[min(e, ref.E - 1)], name)

    def opt(on, build):
        return build() if on else None

    def new_layer(n):
        heads: list = []
        for e, (ke, ve) in enumerate(kv):
            w_q = b.whole(tensor_name("w_q", n, e), b.free("W_Q", (h, ke), like(e, "w_q")))  # [h, k]
            if e % r == 0:
                shared = {
                    "w_k": b.whole(tensor_name("w_k", n, e), b.free("W_K", (h, ke), like(e, "w_k"))),  # [h, k]
                    "w_v": b.whole(tensor_name("w_v", n, e), b.free("W_V", (h, ve), like(e, "w_v"))),  # [h, v]
                }
            else:
                shared = {kind: getattr(heads[e - e % r], kind) for kind in ("w_k", "w_v", "b_k", "b_v")}
            w_o = b.whole(tensor_name("w_o", n, e), b.zeros("W_O", (ve, h)))  # [v, h]  W_O = 0
            if arch.qkv_bias:
                shared["b_q"] = b.whole(tensor_name("b_q", n, e), b.free("b_Q", (ke,), like(e, "b_q")))  # [k]
                if e % r == 0:
                    shared["b_k"] = b.whole(tensor_name("b_k", n, e), b.free("b_K", (ke,), like(e, "b_k")))  # [k]
                    shared["b_v"] = b.whole(tensor_name("b_v", n, e), b.free("b_V", (ve,), like(e, "b_v")))  # [v]
            heads.append(Head(w_q=w_q, w_o=w_o, **shared))
        layer_norm = arch.norm == "layer"
        return Layer(
            norm_mha=b.whole(
                tensor_name("norm_mha", n), b.free("g_MHA", (h,), ones if ref is None else ref.norm_mha)
            ),  # [h]
            heads=tuple(heads),
            norm_mlp=b.whole(
                tensor_name("norm_mlp", n), b.free("g_MLP", (h,), ones if ref is None else ref.norm_mlp)
            ),  # [h]
            w_l1=b.whole(tensor_name("w_l1", n), b.free("W_l1", (h, p), None if ref is None else ref.w_l1)),  # [h, p]
            b_l1=opt(
                arch.mlp_bias,
                lambda: b.whole(tensor_name("b_l1", n), b.free("b_l1", (p,), None if ref is None else ref.b_l1)),
            ),  # [p]
            w_l2=b.whole(tensor_name("w_l2", n), b.zeros("W_l2", (p, h))),  # [p, h]  W_l2 = 0
            b_l2=opt(arch.mlp_bias, lambda: b.whole(tensor_name("b_l2", n), b.zeros("b_l2", (h,)))),  # [h]  b_l2 = 0
            w_gate=opt(
                arch.mlp == "gated",
                lambda: b.whole(
                    tensor_name("w_gate", n), b.free("W_gate", (h, p), None if ref is None else ref.w_gate)
                ),
            ),  # [h, p]
            b_gate=opt(
                arch.mlp == "gated" and arch.mlp_bias,
                lambda: b.whole(tensor_name("b_gate", n), b.free("b_gate", (p,), None if ref is None else ref.b_gate)),
            ),  # [p]
            b_o=opt(arch.o_bias, lambda: b.whole(tensor_name("b_o", n), b.zeros("b_O", (h,)))),  # [h]  b_o = 0
            norm_mha_b=opt(
                layer_norm,
                lambda: b.whole(
                    tensor_name("norm_mha_b", n), b.free("beta_MHA", (h,), None if ref is None else ref.norm_mha_b)
                ),
            ),  # [h]
            norm_mlp_b=opt(
                layer_norm,
                lambda: b.whole(
                    tensor_name("norm_mlp_b", n), b.free("beta_MLP", (h,), None if ref is None else ref.norm_mlp_b)
                ),
            ),  # [h]
            kv_heads=G,
        )

    added = tuple(new_layer(at + i) for i in range(count))
    layers = model.layers[:at] + added + model.layers[at:]
    return finish(replace(model, layers=layers), b.blocks, return_manifest)

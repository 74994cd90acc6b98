"""Entry-level models and expansions with the blocks of real transformers (docs/spec.md section 4).

:func:`arch_model` builds a symbolic model (:class:`~proofs.symbolic.SModel`, every entry a
distinct symbol) for an :class:`fpt_ref.blocks.Arch` and sizes, optionally with grouped-query
attention (``kv`` key/value heads). The six builders apply the recipes of docs/spec.md
section 4.2 to such a model, and, through their options, the tempting wrong recipes
(:data:`fpt_ref.blocks.WRONG_RECIPES`). Each returns ``(expanded model, {block: [matrices]})``
like :mod:`proofs.expand`: a block in ``zero`` is zeros, any other new block fresh symbols;
blocks the recipe *derives* from old values (scaled blocks, the row means of LayerNorm's mean
padding, RoPE's re-based ``theta``) are not new blocks and are not listed.

New-block names (beyond :mod:`fpt_ref.paper`'s): ``M_gate``, ``m_b_gate`` (new columns and
entries of ``W_gate``, ``b_gate``); ``b_q_new``, ``b_k_new``, ``b_v_new`` (a new head's biases);
``m_b_q``, ``m_b_k``, ``m_b_v`` (new bias entries of a grown head); ``m_b_o`` (new entries of
``b_o``); ``m_beta`` (new entries of every LayerNorm bias); ``beta_MHA``, ``beta_MLP``,
``b_o``, ``W_gate``, ``b_gate`` (a new layer's). Scalings: ``b_k`` (with ``W_K``, by
``sqrt(k^/k)``), ``theta`` (RoPE base to ``theta^(k^/k)``), ``g`` (every gain, the final norm's
included) and ``eps``.
"""

from __future__ import annotations

import sympy as sp

from fpt_ref.blocks import Arch
from fpt_ref.names import tensor_name

from . import core as C
from .expand import _Blocks, _root, _terms
from .symbolic import SKV, THETA_NAME, SHead, SLayer, SModel, rope_pairs
from .symbolic import sym_matrix as _sym_matrix
from .symbolic import sym_row as _sym_row

THETA = sp.Symbol(THETA_NAME, positive=True)
EPS = sp.Symbol("eps", positive=True)


def arch_model(
    arch: Arch, s=2, h=2, p=2, E=1, k=2, v=2, o=2, N=1, kv: int | None = None, eps=0, causal=False, terms=False
) -> SModel:
    """A symbolic model with the blocks of ``arch``; ``kv`` key/value heads per layer (grouped-query
    attention, ``kv`` divides ``E``; None: every head its own). RoPE's base is the positive
    symbol ``theta``; a tied output is ``w_out = embed^T`` with ``embed`` [o, h].

    ``terms``: a term model for symbolic sizes (:mod:`proofs.chains`): every tensor a matrix
    symbol of the size symbols ``s, h, p, k, v, o`` (the integer arguments then give only
    ``E``, ``N`` and ``kv``).
    """
    if kv is not None and E % kv:
        raise ValueError(f"kv: must divide E={E}, got {kv}")
    if terms:
        from . import chains as CH

        s, h, p, k, v, o = CH.s, CH.h, CH.p, CH.k, CH.v, CH.o
        sym_matrix = C.Sym  # noqa: N806
        sym_row = lambda name, n: C.Sym(name, 1, n)  # noqa: E731, N806
        zeros = C.Zero
    else:
        sym_matrix, sym_row, zeros = _sym_matrix, _sym_row, sp.zeros  # noqa: N806
    layers = []
    for n in range(N):
        qkv = arch.qkv_bias
        heads = tuple(
            SHead(
                sym_matrix(tensor_name("w_q", n, e), h, k),
                None if kv else sym_matrix(tensor_name("w_k", n, e), h, k),
                None if kv else sym_matrix(tensor_name("w_v", n, e), h, v),
                sym_matrix(tensor_name("w_o", n, e), v, h),
                sym_row(f"layers.{n}.heads.{e}.b_q", k) if qkv else None,
                sym_row(f"layers.{n}.heads.{e}.b_k", k) if qkv and not kv else None,
                sym_row(f"layers.{n}.heads.{e}.b_v", v) if qkv and not kv else None,
            )
            for e in range(E)
        )
        groups = None
        if kv:
            groups = tuple(
                SKV(
                    sym_matrix(f"layers.{n}.kv.{g}.w_k", h, k),
                    sym_matrix(f"layers.{n}.kv.{g}.w_v", h, v),
                    sym_row(f"layers.{n}.kv.{g}.b_k", k) if qkv else None,
                    sym_row(f"layers.{n}.kv.{g}.b_v", v) if qkv else None,
                )
                for g in range(kv)
            )
        gated, bias, ln = arch.mlp == "gated", arch.mlp_bias, arch.norm == "layer"
        layers.append(
            SLayer(
                sym_row(tensor_name("norm_mha", n), h),
                heads,
                sym_row(tensor_name("norm_mlp", n), h),
                sym_matrix(tensor_name("w_l1", n), h, p),
                sym_row(tensor_name("b_l1", n), p) if bias else None,
                sym_matrix(tensor_name("w_l2", n), p, h),
                sym_row(tensor_name("b_l2", n), h) if bias else None,
                sym_matrix(f"layers.{n}.w_gate", h, p) if gated else None,
                sym_row(f"layers.{n}.b_gate", p) if gated and bias else None,
                sym_row(f"layers.{n}.norm_mha_b", h) if ln else None,
                sym_row(f"layers.{n}.norm_mlp_b", h) if ln else None,
                sym_row(f"layers.{n}.b_o", h) if arch.o_bias else None,
                groups,
            )
        )
    return SModel(
        sym_matrix("I", s, h),
        sym_matrix("pos", s, h) if arch.positions == "learned" else zeros(s, h),
        sym_matrix("embed", o, h).T if arch.tied else sym_matrix("w_out", h, o),
        tuple(layers),
        eps=eps,
        causal=causal,
        norm=arch.norm,
        rope=(THETA, arch.rope_layout) if arch.positions == "rope" else None,
        final_norm=sym_row("final_norm", h) if arch.final_norm else None,
        final_norm_b=sym_row("final_norm_b", h) if arch.final_norm and ln else None,
        tied=arch.tied,
    )


def _rep(obj, **kw):
    from dataclasses import replace

    return replace(obj, **kw)


# ---- MLP expansion -----------------------------------------------------------------------------
def expand_mlp(m: SModel, p_new: int, zero, prefix: str = ""):
    """``W_l1``, ``b_l1``, ``W_gate``, ``b_gate`` get new columns (``M_l1``, ``m_b_l1``, ``M_gate``,
    ``m_b_gate``), ``W_l2`` new rows ``M_l2``; absent blocks stay absent."""
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):
        h, p = L.w_l1.shape
        d, w = p_new - p, str(n)
        layers.append(
            _rep(
                L,
                w_l1=L.w_l1.row_join(B("M_l1", h, d, w)),  # [h, p^]
                b_l1=None if L.b_l1 is None else L.b_l1.row_join(B("m_b_l1", 1, d, w)),  # [1, p^]
                w_gate=None if L.w_gate is None else L.w_gate.row_join(B("M_gate", h, d, w)),  # [h, p^]
                b_gate=None if L.b_gate is None else L.b_gate.row_join(B("m_b_gate", 1, d, w)),  # [1, p^]
                w_l2=L.w_l2.col_join(B("M_l2", d, h, w)),  # [p^, h]
            )
        )
    return m.replace(layers=tuple(layers)), B.made


# ---- head addition -------------------------------------------------------------------------------
def _head_maker(B, n: int, h, k, v, bias: bool):
    """``q_head(e, own_kv)``: a new head of layer ``n`` (its own keys and values unless grouped)."""

    def q_head(e, own_kv: bool) -> SHead:
        w = f"{n}.{e}"
        return SHead(
            B("W_Q_new", h, k, w),  # [h, k]
            B("W_K_new", h, k, w) if own_kv else None,  # [h, k]
            B("W_V_new", h, v, w) if own_kv else None,  # [h, v]
            B("M_O", v, h, w),  # [v, h]
            B("b_q_new", 1, k, w) if bias else None,  # [1, k]
            B("b_k_new", 1, k, w) if bias and own_kv else None,  # [1, k]
            B("b_v_new", 1, v, w) if bias and own_kv else None,  # [1, v]
        )

    return q_head


def add_heads(m: SModel, zero, prefix: str = "", mode: str = "per_group", count: int = 1):
    """New query heads with ``W_Q_new``, ``b_q_new`` and rows ``M_O`` of ``W_O``.

    Without groups: ``count`` heads appended, each with its own ``W_K_new``, ``W_V_new`` (and
    biases). Grouped layers (``kv``): ``mode="per_group"`` inserts one new query head at the end
    of every group, reading that group's keys and values (the recipe); ``"new_group"`` appends
    one new key/value head (``W_K_new``, ``W_V_new``) and ``E/kv`` query heads reading it;
    ``"append"`` appends ``kv`` query heads at the end (the wrong recipe: every later head is
    re-grouped).
    """
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):
        h = L.w_l1.rows
        k, v = L.heads[0].w_q.cols, L.heads[0].w_o.rows
        bias = L.heads[0].b_q is not None

        q_head = _head_maker(B, n, h, k, v, bias)
        if L.kv is None:
            E = len(L.heads)
            layers.append(_rep(L, heads=L.heads + tuple(q_head(e, True) for e in range(E, E + count))))
            continue
        G, size = len(L.kv), len(L.heads) // len(L.kv)
        if mode == "per_group":
            heads = ()
            for g in range(G):
                heads += L.heads[g * size : (g + 1) * size] + (q_head(len(L.heads) + g, False),)
            layers.append(_rep(L, heads=heads))
        elif mode == "append":
            layers.append(_rep(L, heads=L.heads + tuple(q_head(len(L.heads) + g, False) for g in range(G))))
        elif mode == "new_group":
            w = f"{n}.kv{G}"
            group = SKV(
                B("W_K_new", h, k, w),
                B("W_V_new", h, v, w),
                B("b_k_new", 1, k, w) if bias else None,
                B("b_v_new", 1, v, w) if bias else None,
            )
            new = tuple(q_head(len(L.heads) + j, False) for j in range(size))
            layers.append(_rep(L, heads=L.heads + new, kv=L.kv + (group,)))
        else:
            raise ValueError(f"mode: must be per_group, new_group or append, got {mode!r}")
    return m.replace(layers=tuple(layers)), B.made


# ---- heads expansion -----------------------------------------------------------------------------
def expand_heads(m: SModel, v_new: int, zero, prefix: str = ""):
    """``W_V -> [W_V M_V]``, ``b_v -> [b_v m_b_v]``, ``W_O,e -> [W_O,e; M_O,e]``; in a grouped layer
    the group's shared ``W_V`` grows once and every query head of the group gets its ``M_O``."""
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):

        def grow_v(w_v, b_v, where):
            h, v = w_v.shape
            M = w_v.row_join(B("M_V", h, v_new - v, where))  # [h, v^]
            return M, None if b_v is None else b_v.row_join(B("m_b_v", 1, v_new - v, where))  # [1, v^]

        heads = []
        for e, H in enumerate(L.heads):
            w_v, b_v = H.w_v, H.b_v
            if L.kv is None:
                w_v, b_v = grow_v(H.w_v, H.b_v, f"{n}.{e}")
            d = v_new - H.w_o.rows
            heads.append(_rep(H, w_v=w_v, b_v=b_v, w_o=H.w_o.col_join(B("M_O", d, H.w_o.cols, f"{n}.{e}"))))
        kv = None
        if L.kv is not None:
            kv = tuple(
                _rep(G, **dict(zip(("w_v", "b_v"), grow_v(G.w_v, G.b_v, f"{n}.kv{g}")))) for g, G in enumerate(L.kv)
            )
        layers.append(_rep(L, heads=tuple(heads), kv=kv))
    return m.replace(layers=tuple(layers)), B.made


# ---- attention expansion ---------------------------------------------------------------------------
def _place(W, M, k: int, layout: str | None):
    """Old columns W [r, k] and new ones M [r, d] in RoPE's layout: ``half`` keeps every old pair a
    pair (old ``[0, k/2)`` first, then half the new ones, old ``[k/2, k)``, the other half);
    otherwise (interleaved, no RoPE, the wrong ``append``) the new columns are appended."""
    if layout != "half":
        return W.row_join(M)
    d = M.cols
    return W[:, : k // 2].row_join(M[:, : d // 2]).row_join(W[:, k // 2 :]).row_join(M[:, d // 2 :])


def expand_attention(m: SModel, k_new: int, zero, scale, prefix: str = "", rope_mode: str = "pairs"):
    """``W_Q -> [W_Q M_Q]``, ``W_K -> [c W_K M_K]`` (``c = sqrt(k^/k)`` when ``W_K`` is in ``scale``;
    ``W_Q`` the mirror), biases alike (``b_k`` scaled only when ``b_k`` is in ``scale``); with
    RoPE the columns are placed by :func:`_place` (``rope_mode="append"``: appended whatever the
    layout) and ``theta -> theta^(k^/k)`` when ``theta`` is in ``scale``. Grouped layers grow the
    group's shared ``W_K`` once and give every query head its ``M_Q``."""
    B = _Blocks(zero, prefix, _terms(m))
    layout = None if m.rope is None else (m.rope[1] if rope_mode == "pairs" else "append")
    layers = []
    k_old = None
    for n, L in enumerate(m.layers):

        def grow(W, b, name, bname, where, scaled, bscaled):
            h, k = W.shape
            c = _root(k_new, k)
            W2 = _place(W * c if scaled else W, B(name, h, k_new - k, where), k, layout)  # [h, k^]
            if b is None:
                return W2, None
            return W2, _place(b * c if bscaled else b, B(bname, 1, k_new - k, where), k, layout)  # [1, k^]

        heads = []
        for e, H in enumerate(L.heads):
            k_old = H.w_q.cols
            wq, bq = grow(H.w_q, H.b_q, "M_Q", "m_b_q", f"{n}.{e}", "W_Q" in scale, "b_q" in scale)
            wk, bk = H.w_k, H.b_k
            if L.kv is None:
                wk, bk = grow(H.w_k, H.b_k, "M_K", "m_b_k", f"{n}.{e}", "W_K" in scale, "b_k" in scale)
            heads.append(_rep(H, w_q=wq, b_q=bq, w_k=wk, b_k=bk))
        kv = None
        if L.kv is not None:
            kv = []
            for g, G in enumerate(L.kv):
                wk, bk = grow(G.w_k, G.b_k, "M_K", "m_b_k", f"{n}.kv{g}", "W_K" in scale, "b_k" in scale)
                kv.append(_rep(G, w_k=wk, b_k=bk))
            kv = tuple(kv)
        layers.append(_rep(L, heads=tuple(heads), kv=kv))
    rope = m.rope
    if rope is not None and "theta" in scale:
        rope = (rope[0] ** (sp.sympify(k_new) / k_old), rope[1])
    return m.replace(layers=tuple(layers), rope=rope), B.made


# ---- hidden dimension expansion --------------------------------------------------------------------
def _mean_cols(W, d: int):
    """``d`` columns, each the row mean of W's columns: W [r, h] -> [r, d]."""
    mu = W * sp.ones(W.cols, 1) / W.cols  # [r, 1]
    return mu * sp.ones(1, d)  # [r, d]


def expand_hidden(m: SModel, h_new: int, zero, scale, prefix: str = "", pad: str = "zero"):
    """Grow ``h -> h^``. Readers (``W_Q``, ``W_K``, ``W_V``, ``W_l1``, ``W_gate``; ``W_out`` untied) get
    new rows ``M_Q``, ..., ``M_gate``, ``M_out``; gains new entries ``m_g`` (existing ones times
    ``sqrt(h/h^)`` with ``g`` in ``scale``, the final norm's too); LayerNorm biases new entries
    ``m_beta``. Writers of the residual stream (``I``, ``P``, every ``W_O,e``, ``b_o``, ``W_l2``,
    ``b_l2``) get new columns: with ``pad="zero"`` the blocks ``M_I``, ``M_P``, ``M_O``, ``m_b_o``,
    ``M_l2``, ``m_b_l2``; with ``pad="mean"`` the row mean of their old columns (LEMON's average
    expansion; docs/spec.md section 4.2). A tied ``W_out = embed^T`` gets the new embedding
    columns as rows: zero (``M_I`` in ``zero``) or free with ``pad="zero"``, the row means with
    ``pad="mean"``. ``eps -> eps h/h^`` with ``eps`` in ``scale``."""
    h, s = m.h, m.s
    d = h_new - h
    c = _root(h, h_new)
    B = _Blocks(zero, prefix, _terms(m))

    def gain(g, where):
        return (g * c if "g" in scale else g).row_join(B("m_g", 1, d, where))  # [1, h^]

    def beta(b, where):
        return None if b is None else b.row_join(B("m_beta", 1, d, where))  # [1, h^]

    def writer(W, name, where=""):
        if W is None:
            return None
        return W.row_join(_mean_cols(W, d) if pad == "mean" else B(name, W.rows, d, where))  # [r, h^]

    layers = []
    for n, L in enumerate(m.layers):
        heads = tuple(
            _rep(
                H,
                w_q=H.w_q.col_join(B("M_Q", d, H.w_q.cols, f"{n}.{e}")),  # [h^, k]
                w_k=None if H.w_k is None else H.w_k.col_join(B("M_K", d, H.w_k.cols, f"{n}.{e}")),  # [h^, k]
                w_v=None if H.w_v is None else H.w_v.col_join(B("M_V", d, H.w_v.cols, f"{n}.{e}")),  # [h^, v]
                w_o=writer(H.w_o, "M_O", f"{n}.{e}"),  # [v, h^]
            )
            for e, H in enumerate(L.heads)
        )
        kv = None
        if L.kv is not None:
            kv = tuple(
                _rep(
                    G,
                    w_k=G.w_k.col_join(B("M_K", d, G.w_k.cols, f"{n}.kv{g}")),
                    w_v=G.w_v.col_join(B("M_V", d, G.w_v.cols, f"{n}.kv{g}")),
                )
                for g, G in enumerate(L.kv)
            )
        layers.append(
            _rep(
                L,
                norm_mha=gain(L.norm_mha, f"{n}.mha"),
                norm_mha_b=beta(L.norm_mha_b, f"{n}.mha"),
                heads=heads,
                kv=kv,
                b_o=writer(L.b_o, "m_b_o", str(n)),
                norm_mlp=gain(L.norm_mlp, f"{n}.mlp"),
                norm_mlp_b=beta(L.norm_mlp_b, f"{n}.mlp"),
                w_l1=L.w_l1.col_join(B("M_l1", d, L.w_l1.cols, str(n))),  # [h^, p]
                w_gate=None if L.w_gate is None else L.w_gate.col_join(B("M_gate", d, L.w_gate.cols, str(n))),
                w_l2=writer(L.w_l2, "M_l2", str(n)),  # [p, h^]
                b_l2=writer(L.b_l2, "m_b_l2", str(n)),  # [1, h^]
            )
        )
    if m.tied:
        E = m.w_out.T  # embed [o, h]
        new = _mean_cols(E, d) if pad == "mean" else B("M_I", E.rows, d, "embed")  # [o, d]
        w_out = E.row_join(new).T  # [h^, o]
    else:
        w_out = m.w_out.col_join(B("M_out", d, m.w_out.cols))  # [h^, o]
    if isinstance(m.pos, C.Zero):  # no learned positions (term model)
        pos = m.pos.row_join(C.Zero(s, d))
    elif isinstance(m.pos, sp.MatrixBase) and m.pos.is_zero_matrix:  # no learned positions
        pos = m.pos.row_join(sp.zeros(s, d))
    else:
        pos = writer(m.pos, "M_P")
    final = None if m.final_norm is None else gain(m.final_norm, "final")
    return m.replace(
        inp=writer(m.inp, "M_I"),  # [s, h^]
        pos=pos,  # [s, h^]
        w_out=w_out,
        layers=tuple(layers),
        eps=m.eps * sp.sympify(h) / h_new if "eps" in scale else m.eps,
        final_norm=final,
        final_norm_b=beta(m.final_norm_b, "final"),
    ), B.made


# ---- layer addition ------------------------------------------------------------------------------------
def add_layer(m: SModel, at: int, zero, prefix: str = ""):
    """A new layer at ``at`` with the blocks of the model's first layer (same sizes, biases, gate,
    LayerNorm biases, groups): ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``b_q``, ``b_k``, ``b_v``, ``b_o``,
    ``g_MHA``, ``beta_MHA``, ``g_MLP``, ``beta_MLP``, ``W_l1``, ``b_l1``, ``W_gate``, ``b_gate``,
    ``W_l2``, ``b_l2``."""
    B = _Blocks(zero, prefix, _terms(m))
    L0 = m.layers[0]
    w = str(at)

    def like(M, name, where=w):
        return None if M is None else B(name, M.rows, M.cols, where)

    heads = tuple(
        SHead(
            like(H.w_q, "W_Q", f"{w}.{e}"),
            like(H.w_k, "W_K", f"{w}.{e}"),
            like(H.w_v, "W_V", f"{w}.{e}"),
            like(H.w_o, "W_O", f"{w}.{e}"),
            like(H.b_q, "b_q", f"{w}.{e}"),
            like(H.b_k, "b_k", f"{w}.{e}"),
            like(H.b_v, "b_v", f"{w}.{e}"),
        )
        for e, H in enumerate(L0.heads)
    )
    kv = None
    if L0.kv is not None:
        kv = tuple(
            SKV(
                like(G.w_k, "W_K", f"{w}.kv{g}"),
                like(G.w_v, "W_V", f"{w}.kv{g}"),
                like(G.b_k, "b_k", f"{w}.kv{g}"),
                like(G.b_v, "b_v", f"{w}.kv{g}"),
            )
            for g, G in enumerate(L0.kv)
        )
    new = SLayer(
        like(L0.norm_mha, "g_MHA"),
        heads,
        like(L0.norm_mlp, "g_MLP"),
        like(L0.w_l1, "W_l1"),
        like(L0.b_l1, "b_l1"),
        like(L0.w_l2, "W_l2"),
        like(L0.b_l2, "b_l2"),
        like(L0.w_gate, "W_gate"),
        like(L0.b_gate, "b_gate"),
        like(L0.norm_mha_b, "beta_MHA"),
        like(L0.norm_mlp_b, "beta_MLP"),
        like(L0.b_o, "b_o"),
        kv,
    )
    return m.replace(layers=m.layers[:at] + (new,) + m.layers[at:]), B.made


__all__ = ["THETA", "EPS", "arch_model", "expand_mlp", "add_heads", "expand_heads", "expand_attention"]
__all__ += ["expand_hidden", "add_layer", "rope_pairs"]

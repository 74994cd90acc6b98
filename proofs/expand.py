"""The six expansions on symbolic models (docs/spec.md section 2), block by block.

Each builder takes an :class:`~proofs.symbolic.SModel`, the set ``zero`` of new-block names
constrained to zero and the set ``scale`` of scalings applied, and returns the expanded
model and a dict ``{block name: [matrices of that block]}``. A block not in ``zero`` is a
matrix of fresh symbols named ``<prefix><block>[i,j]`` (``@n`` / ``@n.e`` add the layer and
head when the model has several), so it may hold anything. The layout is fpt_ref's: new
columns / rows are appended after the existing ones (new value rows of ``W_O`` right after
their head's block), so the same tensors can be read back from fpt_ref's expansions.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy as sp

from fpt_ref.paper import EXPANSIONS, NAMES

from . import core as C
from .symbolic import SHead, SLayer, SModel, sym_matrix


def _rows() -> tuple[dict, dict, dict]:
    """Block names, scalings and the paper's constraint sets, read from :mod:`fpt_ref.paper`.

    ``hidden`` is the hidden-dimension row at ``eps = 0``, where the epsilon rescaling does
    nothing, so its scalings omit ``eps``; ``eps`` is the same row with ``eps > 0`` and every
    scaling (docs/spec.md trap 2).
    """
    blocks, scalings, paper = {}, {}, {}
    for name in NAMES:
        row = EXPANSIONS[name]
        blocks[name] = dict(row.blocks)
        scalings[name] = dict(row.scalings)
        paper[name] = (set(row.zero), set(row.paper_scalings))
    blocks["eps"] = blocks["hidden"]
    scalings["eps"] = dict(scalings["hidden"])
    paper["eps"] = (set(paper["hidden"][0]), set(paper["hidden"][1]))
    scalings["hidden"] = {k: d for k, d in scalings["hidden"].items() if k != "eps"}
    paper["hidden"] = (paper["hidden"][0], paper["hidden"][1] - {"eps"})
    return blocks, scalings, paper


#: theorem -> {block: description}, in the paper's order
#: theorem -> {scaling: description}
#: theorem -> (zero blocks, scalings) of the paper
BLOCKS, SCALINGS, PAPER = _rows()


class _Blocks:
    """Makes new blocks (zero or fresh symbols) and records them by block name.

    Every new block is tagged with where it sits (``@layer``, ``@layer.head``,
    ``@layer.mha`` for a gain), so no two blocks share a symbol, whatever the model's size.
    The model's tensors are explicit SymPy matrices (entry level) or block terms
    (:mod:`proofs.core`, symbolic sizes); new blocks are made of the same kind.
    """

    def __init__(self, zero: Iterable[str], prefix: str, terms: bool):
        self.zero = set(zero)
        self.prefix = prefix
        self.terms = terms
        self.made: dict = {}

    def __call__(self, name: str, rows, cols, where: str = ""):
        tag = f"@{where}" if where else ""
        if self.terms:
            M = C.Zero(rows, cols, name) if name in self.zero else C.Sym(f"{self.prefix}{name}{tag}", rows, cols)
        elif name in self.zero:
            M = sp.zeros(rows, cols)
        else:
            M = sym_matrix(f"{self.prefix}{name}{tag}", rows, cols)
        self.made.setdefault(name, []).append(M)
        return M


def _terms(m: SModel) -> bool:
    return isinstance(m.pos, C.Term)


def _root(a, b):
    """``sqrt(a / b)``, exact (integers or size symbols)."""
    return sp.sqrt(sp.sympify(a) / sp.sympify(b))


def expand_mlp(m: SModel, p_new, zero=PAPER["mlp"][0], scale=(), prefix=""):
    """``W_l1 -> [W_l1 M_l1]``, ``b_l1 -> [b_l1 m_b_l1]``, ``W_l2 -> [[W_l2], [M_l2]]`` in every layer."""
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):
        h, p = L.w_l1.shape
        d = p_new - p
        layers.append(
            SLayer(
                L.norm_mha,
                L.heads,
                L.norm_mlp,
                L.w_l1.row_join(B("M_l1", h, d, str(n))),  # [h, p^]
                L.b_l1.row_join(B("m_b_l1", 1, d, str(n))),  # [1, p^]
                L.w_l2.col_join(B("M_l2", d, h, str(n))),  # [p^, h]
                L.b_l2,
            )
        )
    return m.replace(layers=tuple(layers)), B.made


def add_heads(m: SModel, k, v, zero=PAPER["add_heads"][0], scale=(), prefix="", count: int = 1):
    """Add ``count`` heads (``W_Q_new``, ``W_K_new``, ``W_V_new``, rows ``M_O`` of ``W_O``) to every layer."""
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):
        h = L.w_l1.rows
        new = tuple(
            SHead(
                B("W_Q_new", h, k, f"{n}.{e}"),  # [h, k]
                B("W_K_new", h, k, f"{n}.{e}"),  # [h, k]
                B("W_V_new", h, v, f"{n}.{e}"),  # [h, v]
                B("M_O", v, h, f"{n}.{e}"),  # [v, h]
            )
            for e in range(len(L.heads), len(L.heads) + count)
        )
        layers.append(SLayer(L.norm_mha, L.heads + new, L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
    return m.replace(layers=tuple(layers)), B.made


def expand_heads(m: SModel, v_new, zero=PAPER["heads"][0], scale=(), prefix=""):
    """``W_V,e -> [W_V,e M_V,e]``, ``W_O,e -> [[W_O,e], [M_O,e]]`` for every head."""
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):
        heads = []
        for e, H in enumerate(L.heads):
            h, v = H.w_v.shape
            d = v_new - v
            heads.append(
                SHead(
                    H.w_q,
                    H.w_k,
                    H.w_v.row_join(B("M_V", h, d, f"{n}.{e}")),  # [h, v^]
                    H.w_o.col_join(B("M_O", d, h, f"{n}.{e}")),  # [v^, h]
                )
            )
        layers.append(SLayer(L.norm_mha, tuple(heads), L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
    return m.replace(layers=tuple(layers)), B.made


def expand_attention(m: SModel, k_new, zero=PAPER["attention"][0], scale=PAPER["attention"][1], prefix=""):
    """``W_Q,e -> [W_Q,e M_Q,e]``, ``W_K,e -> [W_K,e M_K,e]``, with ``sqrt(k^/k)`` on the scaled projection(s)."""
    B = _Blocks(zero, prefix, _terms(m))
    layers = []
    for n, L in enumerate(m.layers):
        heads = []
        for e, H in enumerate(L.heads):
            h, k = H.w_q.shape
            c = _root(k_new, k)
            wq = H.w_q * c if "W_Q" in scale else H.w_q
            wk = H.w_k * c if "W_K" in scale else H.w_k
            heads.append(
                SHead(
                    wq.row_join(B("M_Q", h, k_new - k, f"{n}.{e}")),  # [h, k^]
                    wk.row_join(B("M_K", h, k_new - k, f"{n}.{e}")),  # [h, k^]
                    H.w_v,
                    H.w_o,
                )
            )
        layers.append(SLayer(L.norm_mha, tuple(heads), L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
    return m.replace(layers=tuple(layers)), B.made


def expand_hidden(m: SModel, h_new, zero=PAPER["hidden"][0], scale=PAPER["hidden"][1], prefix=""):
    """Grow ``h -> h^``: new columns of I, P, W_O, W_l2, b_l2, g; new rows of W_out, W_l1, W_Q, W_K, W_V.

    ``scale`` may hold ``"g"`` (gains times ``sqrt(h/h^)``) and ``"eps"`` (epsilon times ``h/h^``).
    """
    h = m.h
    d = h_new - h
    c = _root(h, h_new)
    B = _Blocks(zero, prefix, _terms(m))

    def gain(g, where):
        return (g * c if "g" in scale else g).row_join(B("m_g", 1, d, where))  # [1, h^]

    layers = []
    for n, L in enumerate(m.layers):
        heads = tuple(
            SHead(
                H.w_q.col_join(B("M_Q", d, H.w_q.cols, f"{n}.{e}")),  # [h^, k]
                H.w_k.col_join(B("M_K", d, H.w_k.cols, f"{n}.{e}")),  # [h^, k]
                H.w_v.col_join(B("M_V", d, H.w_v.cols, f"{n}.{e}")),  # [h^, v]
                H.w_o.row_join(B("M_O", H.w_o.rows, d, f"{n}.{e}")),  # [v, h^]
            )
            for e, H in enumerate(L.heads)
        )
        layers.append(
            SLayer(
                gain(L.norm_mha, f"{n}.mha"),
                heads,
                gain(L.norm_mlp, f"{n}.mlp"),
                L.w_l1.col_join(B("M_l1", d, L.w_l1.cols, str(n))),  # [h^, p]
                L.b_l1,
                L.w_l2.row_join(B("M_l2", L.w_l2.rows, d, str(n))),  # [p, h^]
                L.b_l2.row_join(B("m_b_l2", 1, d, str(n))),  # [1, h^]
            )
        )
    eps = m.eps * sp.sympify(h) / h_new if "eps" in scale else m.eps
    return m.replace(
        inp=m.inp.row_join(B("M_I", m.s, d)),  # [s, h^]
        pos=m.pos.row_join(B("M_P", m.s, d)),  # [s, h^]
        w_out=m.w_out.col_join(B("M_out", d, m.w_out.cols)),  # [h^, o]
        layers=tuple(layers),
        eps=eps,
    ), B.made


def add_layer(m: SModel, at: int, p, E: int, k, v, zero=PAPER["add_layer"][0], scale=(), prefix="", count: int = 1):
    """Insert ``count`` new layers at position ``at``; all their tensors are new blocks."""
    B = _Blocks(zero, prefix, _terms(m))
    h = m.h
    new = []
    for j in range(count):
        w = f"{at + j}"
        heads = tuple(
            SHead(
                B("W_Q", h, k, f"{w}.{e}"),  # [h, k]
                B("W_K", h, k, f"{w}.{e}"),  # [h, k]
                B("W_V", h, v, f"{w}.{e}"),  # [h, v]
                B("W_O", v, h, f"{w}.{e}"),  # [v, h]
            )
            for e in range(E)
        )
        new.append(
            SLayer(
                B("g_MHA", 1, h, w),  # [1, h]
                heads,
                B("g_MLP", 1, h, w),  # [1, h]
                B("W_l1", h, p, w),  # [h, p]
                B("b_l1", 1, p, w),  # [1, p]
                B("W_l2", p, h, w),  # [p, h]
                B("b_l2", 1, h, w),  # [1, h]
            )
        )
    return m.replace(layers=m.layers[:at] + tuple(new) + m.layers[at:]), B.made

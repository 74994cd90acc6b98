"""The six expansions on symbolic models (PAPER.md section 2), block by block.

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

from .symbolic import SHead, SLayer, SModel, sym_matrix

# theorem -> {block: description}; the order is the order of the listing
BLOCKS = {
    "mlp": {
        "M_l1": "new columns of W_l1 (h x (p^-p))",
        "m_b_l1": "new entries of b_l1 (p^-p)",
        "M_l2": "new rows of W_l2 ((p^-p) x h)",
    },
    "add_heads": {
        "W_Q_new": "the new head's W_Q (h x k)",
        "W_K_new": "the new head's W_K (h x k)",
        "W_V_new": "the new head's W_V (h x v)",
        "M_O": "the new head's rows of W_O (v x h)",
    },
    "heads": {"M_V": "new columns of W_V,e (h x (v^-v))", "M_O": "new rows of W_O,e ((v^-v) x h)"},
    "attention": {"M_Q": "new columns of W_Q,e (h x (k^-k))", "M_K": "new columns of W_K,e (h x (k^-k))"},
    "hidden": {
        "M_I": "new columns of the input I (s x (h^-h))",
        "M_P": "new columns of P",
        "M_O": "new columns of every W_O,e",
        "M_l2": "new columns of W_l2",
        "m_b_l2": "new entries of b_l2",
        "m_g": "new entries of every gain vector g",
        "M_out": "new rows of W_out",
        "M_l1": "new rows of W_l1",
        "M_Q": "new rows of every W_Q,e",
        "M_K": "new rows of every W_K,e",
        "M_V": "new rows of every W_V,e",
    },
    "add_layer": {
        "W_Q": "the new layer's W_Q,e",
        "W_K": "the new layer's W_K,e",
        "W_V": "the new layer's W_V,e",
        "W_O": "the new layer's W_O",
        "g_MHA": "the new layer's Norm^MHA gains",
        "g_MLP": "the new layer's Norm^MLP gains",
        "W_l1": "the new layer's W_l1",
        "b_l1": "the new layer's b_l1",
        "W_l2": "the new layer's W_l2",
        "b_l2": "the new layer's b_l2",
    },
}
BLOCKS["eps"] = BLOCKS["hidden"]

# theorem -> {scaling: description}
SCALINGS = {
    "mlp": {},
    "add_heads": {},
    "heads": {},
    "attention": {"W_K": "W_K,e multiplied by sqrt(k^/k)", "W_Q": "W_Q,e multiplied by sqrt(k^/k)"},
    "hidden": {"g": "every gain g multiplied by sqrt(h/h^)"},
    "eps": {"g": "every gain g multiplied by sqrt(h/h^)", "eps": "norm epsilon multiplied by h/h^"},
    "add_layer": {},
}

# the paper's constraints (PAPER.md table; eps: trap 2)
PAPER = {
    "mlp": ({"M_l2"}, set()),
    "add_heads": ({"M_O"}, set()),
    "heads": ({"M_O"}, set()),
    "attention": ({"M_K"}, {"W_K"}),
    "hidden": ({"M_I", "M_P", "M_O", "M_l2", "m_b_l2"}, {"g"}),
    "eps": ({"M_I", "M_P", "M_O", "M_l2", "m_b_l2"}, {"g", "eps"}),
    "add_layer": ({"W_O", "W_l2", "b_l2"}, set()),
}


class _Blocks:
    """Makes new blocks (zero or fresh symbols) and records them by block name."""

    def __init__(self, zero: Iterable[str], prefix: str, multi: bool):
        self.zero = set(zero)
        self.prefix = prefix
        self.multi = multi
        self.made: dict = {}

    def __call__(self, name: str, rows: int, cols: int, where: str = ""):
        if name in self.zero:
            M = sp.zeros(rows, cols)
        else:
            tag = f"@{where}" if (self.multi and where) else ""
            M = sym_matrix(f"{self.prefix}{name}{tag}", rows, cols)
        self.made.setdefault(name, []).append(M)
        return M


def _multi(m: SModel) -> bool:
    return len(m.layers) > 1 or any(len(L.heads) > 1 for L in m.layers)


def expand_mlp(m: SModel, p_new: int, zero=("M_l2",), scale=(), prefix=""):
    """``W_l1 -> [W_l1 M_l1]``, ``b_l1 -> [b_l1 m_b_l1]``, ``W_l2 -> [[W_l2], [M_l2]]`` in every layer."""
    B = _Blocks(zero, prefix, len(m.layers) > 1)
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


def add_heads(m: SModel, k: int, v: int, zero=("M_O",), scale=(), prefix=""):
    """Add one head (``W_Q_new``, ``W_K_new``, ``W_V_new``, rows ``M_O`` of ``W_O``) to every layer."""
    B = _Blocks(zero, prefix, len(m.layers) > 1)
    layers = []
    for n, L in enumerate(m.layers):
        h = L.w_l1.rows
        new = SHead(
            B("W_Q_new", h, k, str(n)), B("W_K_new", h, k, str(n)), B("W_V_new", h, v, str(n)), B("M_O", v, h, str(n))
        )
        layers.append(SLayer(L.norm_mha, L.heads + (new,), L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
    return m.replace(layers=tuple(layers)), B.made


def expand_heads(m: SModel, v_new: int, zero=("M_O",), scale=(), prefix=""):
    """``W_V,e -> [W_V,e M_V,e]``, ``W_O,e -> [[W_O,e], [M_O,e]]`` for every head."""
    B = _Blocks(zero, prefix, _multi(m))
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
                    H.w_o.col_join(B("M_O", d, h, f"{n}.{e}")),
                )
            )  # [v^, h]
        layers.append(SLayer(L.norm_mha, tuple(heads), L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
    return m.replace(layers=tuple(layers)), B.made


def expand_attention(m: SModel, k_new: int, zero=("M_K",), scale=("W_K",), prefix=""):
    """``W_Q,e -> [W_Q,e M_Q,e]``, ``W_K,e -> [W_K,e M_K,e]``, with ``sqrt(k^/k)`` on the scaled projection(s)."""
    B = _Blocks(zero, prefix, _multi(m))
    layers = []
    for n, L in enumerate(m.layers):
        heads = []
        for e, H in enumerate(L.heads):
            h, k = H.w_q.shape
            c = sp.sqrt(sp.Rational(k_new, k))
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


def expand_hidden(m: SModel, h_new: int, zero=PAPER["hidden"][0], scale=("g",), prefix=""):
    """Grow ``h -> h^``: new columns of I, P, W_O, W_l2, b_l2, g; new rows of W_out, W_l1, W_Q, W_K, W_V.

    ``scale`` may hold ``"g"`` (gains times ``sqrt(h/h^)``) and ``"eps"`` (epsilon times ``h/h^``).
    """
    h = m.h
    d = h_new - h
    c = sp.sqrt(sp.Rational(h, h_new))
    B = _Blocks(zero, prefix, _multi(m))

    def gain(g, where):
        return (g * c if "g" in scale else g).row_join(B("m_g", 1, d, where))  # [1, h^]

    layers = []
    for n, L in enumerate(m.layers):
        heads = tuple(
            SHead(
                H.w_q.col_join(B("M_Q", d, H.w_q.cols, f"{n}.{e}")),  # [h^, k]
                H.w_k.col_join(B("M_K", d, H.w_k.cols, f"{n}.{e}")),  # [h^, k]
                H.w_v.col_join(B("M_V", d, H.w_v.cols, f"{n}.{e}")),  # [h^, v]
                H.w_o.row_join(B("M_O", H.w_o.rows, d, f"{n}.{e}")),
            )  # [v, h^]
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
                L.b_l2.row_join(B("m_b_l2", 1, d, str(n))),
            )
        )  # [1, h^]
    eps = m.eps * sp.Rational(h, h_new) if "eps" in scale else m.eps
    return m.replace(
        inp=m.inp.row_join(B("M_I", m.s, d)),
        pos=m.pos.row_join(B("M_P", m.s, d)),
        w_out=m.w_out.col_join(B("M_out", d, m.w_out.cols)),
        layers=tuple(layers),
        eps=eps,
    ), B.made


def add_layer(m: SModel, at: int, p: int, E: int, k: int, v: int, zero=PAPER["add_layer"][0], scale=(), prefix=""):
    """Insert a new layer at position ``at``; all its tensors are new blocks."""
    B = _Blocks(zero, prefix, E > 1)
    h = m.h
    heads = tuple(
        SHead(B("W_Q", h, k, str(e)), B("W_K", h, k, str(e)), B("W_V", h, v, str(e)), B("W_O", v, h, str(e)))
        for e in range(E)
    )
    L = SLayer(
        B("g_MHA", 1, h), heads, B("g_MLP", 1, h), B("W_l1", h, p), B("b_l1", 1, p), B("W_l2", p, h), B("b_l2", 1, h)
    )
    return m.replace(layers=m.layers[:at] + (L,) + m.layers[at:]), B.made

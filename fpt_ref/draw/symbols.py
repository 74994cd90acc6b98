"""Paper symbols for the tensors of the file format (docs/spec.md section 1) and their axes.

Only labels live here: which blocks are new, zero, scaled or copied always comes from an
expansion's manifest (:class:`fpt_ref.expansions.Block`), never from these names.
"""

from __future__ import annotations

from .. import names

# tensor kind -> (paper symbol in mathtext, axis symbols)
TENSORS = {
    "embed": (r"$I$ (token table)", ("vocab", "h")),
    "pos": (r"$P$", ("s_max", "h")),
    "w_out": (r"$W_{out}$", ("h", "o")),
    "norm_mha": (r"$g^{MHA}$", ("h",)),
    "norm_mlp": (r"$g^{MLP}$", ("h",)),
    "w_l1": (r"$W_{l1}$", ("h", "p")),
    "b_l1": (r"$b_{l1}$", ("p",)),
    "w_l2": (r"$W_{l2}$", ("p", "h")),
    "b_l2": (r"$b_{l2}$", ("h",)),
    "w_q": (r"$W_{Q,e}$", ("h", "k")),
    "w_k": (r"$W_{K,e}$", ("h", "k")),
    "w_v": (r"$W_{V,e}$", ("h", "v")),
    "w_o": (r"$W_{O,e}$", ("v", "h")),
    # a drawing-only view: one layer's W_O,e of every head stacked, the paper's W_O ((E v) x h)
    "W_O": (r"$W_O$ (all heads' $W_{O,e}$ stacked)", ("Ev", "h")),
}

_TEX = {"s_max": r"s_{max}", "vocab": r"\mathrm{vocab}", "Ev": r"\sum_e v_e"}


def parse_name(name: str):
    """``(kind, layer, head)`` of a file-format tensor name (:func:`fpt_ref.names.parse_name`), or
    of the drawing-only stacked view ``layers.{n}.W_O``; layer/head are ``None`` when absent.

    >>> parse_name("layers.1.heads.0.w_k")
    ('w_k', 1, 0)
    >>> parse_name("layers.1.W_O")
    ('W_O', 1, None)
    """
    if isinstance(name, str) and name.endswith(".W_O"):
        _, n, _ = names.parse_name(name[: -len("W_O")] + "w_l1")
        return "W_O", n, None
    return names.parse_name(name)


def title(name: str) -> str:
    """Paper symbol and position, e.g. ``$W_{K,e}$  layer 1, head 0``."""
    kind, n, e = parse_name(name)
    where = []
    if n is not None:
        where.append(f"layer {n}")
    if e is not None:
        where.append(f"head {e}")
    return TENSORS[kind][0] + ("  " + ", ".join(where) if where else "")


def axis_symbols(name: str) -> tuple:
    """The paper's symbol for each axis of tensor ``name`` (``("h", "p")`` for ``w_l1``)."""
    return TENSORS[parse_name(name)[0]][1]


def sym(s: str, hat: bool = False) -> str:
    """Mathtext of one dimension symbol, hatted (``\\hat{p}``) for the expanded size."""
    if s == "Ev" and hat:
        return r"\sum_e \hat{v}_e"
    t = _TEX.get(s, s)
    return rf"\hat{{{t}}}" if hat else t

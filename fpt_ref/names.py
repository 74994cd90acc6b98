"""The tensor names of the file format (README, "File format"), built and parsed in one place.

The grammar, with ``n`` the 0-based layer and ``e`` the 0-based head, each written in decimal
without leading zeros::

    embed | pos | w_out | final_norm | final_norm_b
    layers.{n}.(norm_mha | norm_mha_b | b_o | norm_mlp | norm_mlp_b | w_gate | b_gate | w_l1 | b_l1 | w_l2 | b_l2)
    layers.{n}.heads.{e}.(w_q | w_k | w_v | w_o | b_q | b_k | b_v)

In a grouped-query layer only the first query head of each group (``e`` a multiple of the group
size) holds ``w_k``, ``w_v``, ``b_k``, ``b_v``: the other heads of the group read them
(docs/spec.md section 4.1).

The last component is the tensor's *kind*; :data:`fpt_ref.paper.SYMBOLS` gives each kind's
paper symbol.

>>> tensor_name("w_k", 1, 0)
'layers.1.heads.0.w_k'
>>> parse_name("layers.1.heads.0.w_k")
('w_k', 1, 0)
>>> parse_name("layers.01.w_l1")
Traceback (most recent call last):
...
ValueError: name: 'layers.01.w_l1' is not a tensor name of the file format
"""

from __future__ import annotations

import re

#: kinds of the model-wide tensors (no layer index)
MODEL_KINDS: tuple[str, ...] = ("embed", "pos", "w_out", "final_norm", "final_norm_b")
#: kinds of a layer's own tensors (``layers.{n}.KIND``), in file order
LAYER_KINDS: tuple[str, ...] = (
    "norm_mha",
    "norm_mha_b",
    "b_o",
    "norm_mlp",
    "norm_mlp_b",
    "w_gate",
    "b_gate",
    "w_l1",
    "b_l1",
    "w_l2",
    "b_l2",
)
#: kinds of a head's tensors (``layers.{n}.heads.{e}.KIND``)
HEAD_KINDS: tuple[str, ...] = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v")
#: the head kinds a grouped-query layer stores once per group (in the group's first head)
KV_KINDS: tuple[str, ...] = ("w_k", "w_v", "b_k", "b_v")
#: every kind
KINDS: tuple[str, ...] = MODEL_KINDS + LAYER_KINDS + HEAD_KINDS

_INDEX = r"(0|[1-9][0-9]*)"
#: the grammar as one regular expression: groups layer, head, kind
PATTERN = re.compile(rf"^(?:layers\.{_INDEX}\.(?:heads\.{_INDEX}\.)?)?([a-z0-9_]+)$")


def layer_prefix(n: int) -> str:
    """``layers.{n}``: the prefix of layer ``n``'s tensors (also names the layer in messages)."""
    return f"layers.{int(n)}"


def head_prefix(n: int, e: int) -> str:
    """``layers.{n}.heads.{e}``: the prefix of head ``e`` of layer ``n``."""
    return f"{layer_prefix(n)}.heads.{int(e)}"


def tensor_name(kind: str, layer: int | None = None, head: int | None = None) -> str:
    """The file-format name of tensor ``kind`` of layer ``layer`` and head ``head``.

    ``ValueError`` naming ``kind`` when the kind is unknown or the indices do not fit it
    (a head tensor needs both, a layer tensor only ``layer``, a model tensor neither).
    """
    if kind in MODEL_KINDS and layer is None and head is None:
        return kind
    if kind in LAYER_KINDS and layer is not None and head is None:
        return f"{layer_prefix(layer)}.{kind}"
    if kind in HEAD_KINDS and layer is not None and head is not None:
        return f"{head_prefix(layer, head)}.{kind}"
    raise ValueError(f"kind: {kind!r} with layer={layer!r}, head={head!r} names no tensor of the file format")


def parse_name(name: str) -> tuple[str, int | None, int | None]:
    """``(kind, layer, head)`` of a file-format name; ``layer`` / ``head`` are ``None`` when absent.

    ``ValueError`` starting ``name:`` for anything else: an unknown kind, a kind at the wrong
    level (``layers.0.embed``) or an index not written canonically (``layers.00.w_l1``).
    """
    m = PATTERN.match(name) if isinstance(name, str) else None
    if m:
        layer, head, kind = m.groups()
        n = None if layer is None else int(layer)
        e = None if head is None else int(head)
        try:
            if tensor_name(kind, n, e) == name:
                return kind, n, e
        except ValueError:
            pass
    raise ValueError(f"name: {name!r} is not a tensor name of the file format")


#: prefix of the residual-stream names of reference vectors and their comparison
RESIDUAL = "residual"


def residual_name(n: int) -> str:
    """``residual.{n}``: the residual stream ``X_{n+1}`` (``residual.0`` is ``I + P``)."""
    return f"{RESIDUAL}.{int(n)}"


def residual_index(name: str) -> int | None:
    """``n`` of ``residual.{n}``, or ``None`` for any other name (``output``, ...)."""
    prefix = RESIDUAL + "."
    if isinstance(name, str) and name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None

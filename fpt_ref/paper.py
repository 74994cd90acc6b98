"""The paper's table of expansions, once: every other module reads it.

One :class:`Expansion` per expansion of Gesmundo & Maile (arXiv:2308.06103, section 3 and
Table 1; restated in ``docs/spec.md``): its name (the plan step and the proof's theorem
name), section and theorem, the sizes it grows, its new blocks (with the paper's block
names and the tensors they lie in), the blocks the theorem constrains to zero, the scalings
it applies, and the keys a plan step takes; and :data:`SYMBOLS`, the paper symbol of each
tensor of the file format. Nothing here computes: the expansions (``fpt_ref/expansions/``),
plans, manifests, vectors, figures, benchmarks and proofs all look facts up here.

>>> EXPANSIONS["mlp"].theorem, sorted(EXPANSIONS["mlp"].zero)
('Theorem 3.1', ['M_l2'])
>>> NAMES
('mlp', 'add_heads', 'heads', 'attention', 'hidden', 'add_layer')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# plan key kinds: "int" one integer, "ints" one integer or a list, "str" text, "bool" true/false
KEY_KINDS = ("int", "ints", "str", "bool")


@dataclass(frozen=True)
class Expansion:
    """One row of the paper's table.

    Attributes
    ----------
    name : str
        Plan step and theorem name (``"mlp"``).
    title : str
        The paper's name for it (``"MLP expansion"``).
    section : str
        Paper section (``"3.1"``); the theorem is ``Theorem <section>``.
    function : str
        Name of the function in :mod:`fpt_ref.expansions` that applies it.
    grows : tuple of str
        Paper symbols it grows (``("p",)``); ``"N"`` for layers, ``"E"`` for heads.
    blocks : mapping of str to str
        New block name (paper notation, ``M_l2``) to what it is, with its shape.
    tensors : mapping of str to tuple of str
        New block name to the kinds (:mod:`fpt_ref.names`: ``"w_l2"``) of the file-format
        tensors it lies in (``m_g`` lies in both gain vectors).
    zero : frozenset of str
        The new blocks the theorem constrains to zero (the paper's constraint set).
    scalings : mapping of str to str
        Scalings the expansion may apply (name to description).
    paper_scalings : frozenset of str
        The scalings the paper's recipe applies.
    keys : mapping of str to str
        Plan keys to their kind (one of :data:`KEY_KINDS`).
    required : tuple of str
        Plan keys a step must give.
    constraint : str
        The constraint as one line of text (figures, listings).
    arch_blocks : mapping of str to str
        New blocks that only real-architecture blocks have (docs/spec.md section 4: gated MLP,
        biases, LayerNorm); not in the paper, so not in ``blocks``; ``tensors`` places them too.
    per : str
        Where the constraint sets apply: ``"layer"`` (each expanded layer on its own),
        ``"head"`` (each expanded or added head) or ``"model"`` (all blocks together).
    minimal : tuple of (frozenset of str, frozenset of str)
        Every minimal sufficient constraint set, as ``(zero blocks, scalings)``: the paper's
        and the alternatives the proof checker's exhaustive search finds (``fpt-ref prove
        NAME --minimal``; the test suite holds this field against that search). For a ReLU
        MLP, ``{M_l1, m_b_l1}`` relies on ``ReLU(0) = 0``. A manifest whose zero blocks
        include one of these sets (with its scalings applied) preserves the function.
    """

    name: str
    title: str
    section: str
    function: str
    grows: tuple[str, ...]
    blocks: Mapping[str, str]
    tensors: Mapping[str, tuple[str, ...]]
    zero: frozenset[str]
    scalings: Mapping[str, str]
    paper_scalings: frozenset[str]
    keys: Mapping[str, str]
    required: tuple[str, ...]
    constraint: str
    minimal: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()
    per: str = "model"
    arch_blocks: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def all_blocks(self) -> Mapping[str, str]:
        """The paper's new blocks and those of the real-architecture blocks (docs/spec.md section 4)."""
        return MappingProxyType({**self.blocks, **self.arch_blocks})

    @property
    def theorem(self) -> str:
        """``"Theorem 3.1"`` etc."""
        return f"Theorem {self.section}"

    @property
    def free(self) -> frozenset[str]:
        """The new blocks the paper's recipe leaves free."""
        return frozenset(self.blocks) - self.zero


#: the new blocks of :data:`EXPANSIONS` rows that the paper's model does not have (docs/spec.md 4.2)
_ARCH_BLOCKS = {
    "M_gate",
    "m_b_gate",
    "b_Q_new",
    "b_K_new",
    "b_V_new",
    "m_b_V",
    "m_b_Q",
    "m_b_K",
    "m_b_O",
    "m_beta",
    "W_gate",
    "b_gate",
    "b_O",
    "b_Q",
    "b_K",
    "b_V",
    "beta_MHA",
    "beta_MLP",
}


def _row(**kw) -> Expansion:
    blocks = dict(kw["blocks"])
    kw["arch_blocks"] = MappingProxyType({b: t for b, t in blocks.items() if b in _ARCH_BLOCKS})
    kw["blocks"] = MappingProxyType({b: t for b, t in blocks.items() if b not in _ARCH_BLOCKS})
    kw["tensors"] = MappingProxyType({b: tuple(t) for b, t in kw["tensors"].items()})
    kw["scalings"] = MappingProxyType(dict(kw.get("scalings", {})))
    kw["keys"] = MappingProxyType(dict(kw["keys"]))
    kw["zero"] = frozenset(kw["zero"])
    kw["paper_scalings"] = frozenset(kw.get("paper_scalings", ()))
    kw["minimal"] = tuple(
        (frozenset(z), frozenset(sc)) for z, sc in kw.get("minimal", [(kw["zero"], kw["paper_scalings"])])
    )
    row = Expansion(**kw)
    assert set(row.tensors) == set(row.blocks) | set(row.arch_blocks), row.name
    assert row.zero <= set(row.blocks) and row.paper_scalings <= set(row.scalings), row.name
    assert (row.zero, row.paper_scalings) in row.minimal, row.name
    assert row.per in ("layer", "head", "model"), row.name
    assert all(z <= set(row.blocks) and sc <= set(row.scalings) for z, sc in row.minimal), row.name
    assert set(row.required) <= set(row.keys) and set(row.keys.values()) <= set(KEY_KINDS), row.name
    return row


_ROWS = (
    _row(
        name="mlp",
        per="layer",
        title="MLP expansion",
        section="3.1",
        function="expand_mlp",
        grows=("p",),
        blocks={
            "M_l1": "new columns of W_l1 (h x (p^-p))",
            "m_b_l1": "new entries of b_l1 (p^-p)",
            "M_l2": "new rows of W_l2 ((p^-p) x h)",
            "M_gate": "new columns of W_gate, gated MLP (h x (p^-p); docs/spec.md section 4)",
            "m_b_gate": "new entries of b_gate, gated MLP (p^-p)",
        },
        tensors={
            "M_l1": ("w_l1",),
            "m_b_l1": ("b_l1",),
            "M_l2": ("w_l2",),
            "M_gate": ("w_gate",),
            "m_b_gate": ("b_gate",),
        },
        zero={"M_l2"},
        keys={"p": "int", "layers": "ints", "zero": "str"},
        required=("p",),
        constraint="M_l2 = 0",
        minimal=[({"M_l2"}, ()), ({"M_l1", "m_b_l1"}, ())],
    ),
    _row(
        name="add_heads",
        per="head",
        title="head addition",
        section="3.2",
        function="add_heads",
        grows=("E",),
        blocks={
            "W_Q_new": "the new head's W_Q (h x k)",
            "W_K_new": "the new head's W_K (h x k)",
            "W_V_new": "the new head's W_V (h x v)",
            "M_O": "the new head's rows of W_O (v x h)",
            "b_Q_new": "the new head's b_q (k; docs/spec.md section 4)",
            "b_K_new": "the new head's b_k (k)",
            "b_V_new": "the new head's b_v (v)",
        },
        tensors={
            "W_Q_new": ("w_q",),
            "W_K_new": ("w_k",),
            "W_V_new": ("w_v",),
            "M_O": ("w_o",),
            "b_Q_new": ("b_q",),
            "b_K_new": ("b_k",),
            "b_V_new": ("b_v",),
        },
        zero={"M_O"},
        keys={"count": "int", "layers": "ints", "k": "int", "v": "int", "groups": "bool"},
        required=(),
        constraint="M_O = 0",
        minimal=[({"M_O"}, ()), ({"W_V_new"}, ())],
    ),
    _row(
        name="heads",
        per="head",
        title="heads expansion",
        section="3.3",
        function="expand_heads",
        grows=("v",),
        blocks={
            "M_V": "new columns of W_V,e (h x (v^-v))",
            "M_O": "new rows of W_O,e ((v^-v) x h)",
            "m_b_V": "new entries of b_v,e (v^-v; docs/spec.md section 4)",
        },
        tensors={"M_V": ("w_v",), "M_O": ("w_o",), "m_b_V": ("b_v",)},
        zero={"M_O"},
        keys={"v": "int", "layers": "ints", "heads": "ints"},
        required=("v",),
        constraint="M_O,e = 0",
        minimal=[({"M_O"}, ()), ({"M_V"}, ())],
    ),
    _row(
        name="attention",
        per="head",
        title="attention expansion",
        section="3.4",
        function="expand_attention",
        grows=("k",),
        blocks={
            "M_Q": "new columns of W_Q,e (h x (k^-k))",
            "M_K": "new columns of W_K,e (h x (k^-k))",
            "m_b_Q": "new entries of b_q,e (k^-k; docs/spec.md section 4)",
            "m_b_K": "new entries of b_k,e (k^-k)",
        },
        tensors={"M_Q": ("w_q",), "M_K": ("w_k",), "m_b_Q": ("b_q",), "m_b_K": ("b_k",)},
        zero={"M_K"},
        scalings={"W_K": "W_K,e multiplied by sqrt(k^/k)", "W_Q": "W_Q,e multiplied by sqrt(k^/k)"},
        paper_scalings={"W_K"},
        keys={"k": "int", "layers": "ints", "heads": "ints", "scale": "str"},
        required=("k",),
        constraint="M_K,e = 0 and W_K,e x sqrt(k^/k) (or mirror: M_Q, W_Q)",
        minimal=[({"M_K"}, {"W_K"}), ({"M_Q"}, {"W_K"}), ({"M_K"}, {"W_Q"}), ({"M_Q"}, {"W_Q"})],
    ),
    _row(
        name="hidden",
        per="model",
        title="hidden dimension expansion",
        section="3.5",
        function="expand_hidden",
        grows=("h",),
        blocks={
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
            "M_gate": "new rows of every W_gate (gated MLP; docs/spec.md section 4)",
            "m_b_O": "new entries of every b_o",
            "m_beta": "new entries of every LayerNorm bias",
        },
        tensors={
            "M_I": ("embed",),
            "M_P": ("pos",),
            "M_O": ("w_o",),
            "M_l2": ("w_l2",),
            "m_b_l2": ("b_l2",),
            "m_g": ("norm_mha", "norm_mlp", "final_norm"),
            "M_out": ("w_out",),
            "M_l1": ("w_l1",),
            "M_Q": ("w_q",),
            "M_K": ("w_k",),
            "M_V": ("w_v",),
            "M_gate": ("w_gate",),
            "m_b_O": ("b_o",),
            "m_beta": ("norm_mha_b", "norm_mlp_b", "final_norm_b"),
        },
        zero={"M_I", "M_P", "M_O", "M_l2", "m_b_l2"},
        scalings={"g": "every gain g multiplied by sqrt(h/h^)", "eps": "norm epsilon multiplied by h/h^"},
        paper_scalings={"g", "eps"},
        keys={"h": "int"},
        required=("h",),
        constraint="new columns of I, P, W_O, W_l2, b_l2 = 0; g x sqrt(h/h^); eps x h/h^",
    ),
    _row(
        name="add_layer",
        per="layer",
        title="layer addition",
        section="3.6",
        function="add_layer",
        grows=("N",),
        blocks={
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
            "W_gate": "the new layer's W_gate (gated MLP; docs/spec.md section 4)",
            "b_gate": "the new layer's b_gate",
            "b_O": "the new layer's b_o",
            "b_Q": "the new layer's b_q,e",
            "b_K": "the new layer's b_k,e",
            "b_V": "the new layer's b_v,e",
            "beta_MHA": "the new layer's Norm^MHA LayerNorm bias",
            "beta_MLP": "the new layer's Norm^MLP LayerNorm bias",
        },
        tensors={
            "W_Q": ("w_q",),
            "W_K": ("w_k",),
            "W_V": ("w_v",),
            "W_O": ("w_o",),
            "g_MHA": ("norm_mha",),
            "g_MLP": ("norm_mlp",),
            "W_l1": ("w_l1",),
            "b_l1": ("b_l1",),
            "W_l2": ("w_l2",),
            "b_l2": ("b_l2",),
            "W_gate": ("w_gate",),
            "b_gate": ("b_gate",),
            "b_O": ("b_o",),
            "b_Q": ("b_q",),
            "b_K": ("b_k",),
            "b_V": ("b_v",),
            "beta_MHA": ("norm_mha_b",),
            "beta_MLP": ("norm_mlp_b",),
        },
        zero={"W_O", "W_l2", "b_l2"},
        keys={"at": "int", "p": "int", "n_heads": "int", "k": "int", "v": "int", "count": "int", "kv_heads": "int"},
        required=("at",),
        constraint="new layer's W_O = 0, W_l2 = 0, b_l2 = 0",
        minimal=[
            ({"W_O", "W_l2", "b_l2"}, ()),
            ({"W_V", "W_l2", "b_l2"}, ()),
            ({"g_MHA", "W_l2", "b_l2"}, ()),
            ({"W_O", "W_l1", "b_l1", "b_l2"}, ()),
            ({"W_V", "W_l1", "b_l1", "b_l2"}, ()),
            ({"g_MHA", "W_l1", "b_l1", "b_l2"}, ()),
            ({"W_O", "g_MLP", "b_l1", "b_l2"}, ()),
            ({"W_V", "g_MLP", "b_l1", "b_l2"}, ()),
            ({"g_MHA", "g_MLP", "b_l1", "b_l2"}, ()),
        ],
    ),
)

#: scaling name -> the tensor kinds it multiplies (``eps`` multiplies the model's norm epsilon)
SCALED_TENSORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"W_K": ("w_k", "b_k"), "W_Q": ("w_q", "b_q"), "g": ("norm_mha", "norm_mlp", "final_norm"), "eps": ()}
)

#: scaling name -> (axis, exponent) of the factor of a scaled tensor: the size along ``axis``
#: (the last axis for a bias vector ``b_k``/``b_q``)
#: of the tensor grows from ``old`` to ``new`` and the factor is ``sqrt(new / old)`` for
#: exponent +1 (``W_K``, ``W_Q``: ``sqrt(k^/k)``, axis 1 holds the key size) and
#: ``sqrt(old / new)`` for -1 (gains: ``sqrt(h/h^)``, axis 0 holds the hidden size). The norm
#: epsilon is not a tensor: it becomes ``eps h / h^``.
SCALE_FACTORS: Mapping[str, tuple[int, int]] = MappingProxyType({"W_K": (1, 1), "W_Q": (1, 1), "g": (0, -1)})

#: kind of a file-format tensor (:mod:`fpt_ref.names`) -> its paper symbol. A manifest names
#: an existing block (copied or scaled) by the symbol of the tensor it belongs to.
SYMBOLS: Mapping[str, str] = MappingProxyType(
    {
        "embed": "I",
        "pos": "P",
        "w_out": "W_out",
        "norm_mha": "g_MHA",
        "norm_mlp": "g_MLP",
        "w_l1": "W_l1",
        "b_l1": "b_l1",
        "w_l2": "W_l2",
        "b_l2": "b_l2",
        "w_q": "W_Q,e",
        "w_k": "W_K,e",
        "w_v": "W_V,e",
        "w_o": "W_O,e",
        "final_norm": "g_f",
        "final_norm_b": "beta_f",
        "norm_mha_b": "beta_MHA",
        "norm_mlp_b": "beta_MLP",
        "b_o": "b_O",
        "w_gate": "W_gate",
        "b_gate": "b_gate",
        "b_q": "b_Q,e",
        "b_k": "b_K,e",
        "b_v": "b_V,e",
    }
)

#: name -> :class:`Expansion`, in the paper's order
EXPANSIONS: Mapping[str, Expansion] = MappingProxyType({r.name: r for r in _ROWS})
#: the six names in the paper's order
NAMES: tuple[str, ...] = tuple(EXPANSIONS)


def expansion(name: str) -> Expansion:
    """The row named ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return EXPANSIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"name: unknown expansion {name!r}; choose from {', '.join(NAMES)}") from None

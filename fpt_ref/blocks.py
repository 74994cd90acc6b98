"""The block vocabulary of real transformers (docs/spec.md section 4), once.

:class:`Arch` names the blocks a model is built from: the norm, the MLP and its activation,
the positions, the attention biases, an optional final norm and a tied output. The paper's
model (docs/spec.md section 1) is ``Arch()``; :data:`PRESETS` gives the architectures people
grow (``llama``, ``qwen2``, ``gpt2``). Grouped-query attention is not a flag: it is the
structure of a layer (``kv_heads`` smaller than the number of heads, :class:`fpt_ref.model.Layer`).

:data:`RECIPES` is the table block x expansion -> constraint set, each row naming the claim of
the proof checker (``fpt-ref prove``) that proves it, and :data:`WRONG_RECIPES` the tempting
recipes that the checker refutes. docs/spec.md section 4 and docs/architectures.md print them;
``tests/test_proofs_blocks.py`` holds them against ``fpt-ref prove --all --json``.

>>> PRESETS["llama"].mlp, PRESETS["llama"].act, PRESETS["llama"].positions
('gated', 'silu', 'rope')
>>> Arch().is_paper
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType

from .checks import check_float

#: norm kinds: RMSNorm ``g x / sqrt(mean(x^2) + eps)``; LayerNorm ``g (x - mean) / sqrt(var + eps) + beta``
NORMS: tuple[str, ...] = ("rms", "layer")
#: MLP kinds: ``act(X W_l1 + b_l1) W_l2 + b_l2``; gated ``(act(X W_gate + b_gate) * (X W_l1 + b_l1)) W_l2 + b_l2``
MLPS: tuple[str, ...] = ("plain", "gated")
#: elementwise activations; every one has ``act(0) = 0``
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_tanh", "silu")
#: position kinds: learned rows ``P`` added to the input, rotary (RoPE) on queries and keys, or none
POSITIONS: tuple[str, ...] = ("learned", "rope", "none")
#: RoPE layouts: ``half`` pairs dim ``i`` with ``i + k/2`` (Hugging Face ``rotate_half``);
#: ``interleaved`` pairs ``(2i, 2i + 1)`` (Meta, GPT-J)
ROPE_LAYOUTS: tuple[str, ...] = ("half", "interleaved")

_CHOICES = {
    "norm": NORMS,
    "mlp": MLPS,
    "act": ACTIVATIONS,
    "positions": POSITIONS,
    "rope_layout": ROPE_LAYOUTS,
}
_FLAGS = ("mlp_bias", "qkv_bias", "o_bias", "final_norm", "tied")


@dataclass(frozen=True)
class Arch:
    """The blocks of a model (docs/spec.md section 4); the defaults are the paper's model.

    Attributes
    ----------
    norm : {"rms", "layer"}
        Every norm of the model (``norm_mha``, ``norm_mlp`` and the final norm). LayerNorm
        has a bias vector beside each gain.
    mlp : {"plain", "gated"}
    act : {"relu", "gelu", "gelu_tanh", "silu"}
        ``gelu`` is the erf form, ``gelu_tanh`` the tanh approximation.
    mlp_bias : bool
        Whether the MLP has biases (``b_l1``, ``b_l2`` and, gated, ``b_gate``).
    positions : {"learned", "rope", "none"}
    rope_theta : float
        RoPE base ``theta`` (``> 1``); used only with ``positions="rope"``.
    rope_layout : {"half", "interleaved"}
    qkv_bias : bool
        Whether queries, keys and values have biases (``b_q``, ``b_k``, ``b_v`` per head).
    o_bias : bool
        Whether the attention output has a bias (``b_o`` per layer).
    final_norm : bool
        Whether a norm (gain ``final_norm``, LayerNorm bias ``final_norm_b``) precedes ``W_out``.
    tied : bool
        Whether the output matrix is the transposed embedding (``W_out = embed^T``; the model
        then stores no ``w_out``).
    """

    norm: str = "rms"
    mlp: str = "plain"
    act: str = "relu"
    mlp_bias: bool = True
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_layout: str = "half"
    qkv_bias: bool = False
    o_bias: bool = False
    final_norm: bool = False
    tied: bool = False

    def __post_init__(self):
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: must be a bool, got {getattr(self, name)!r}")
        theta = check_float("rope_theta", self.rope_theta)
        if not theta > 1.0:
            raise ValueError(f"rope_theta: must be > 1, got {self.rope_theta!r}")
        object.__setattr__(self, "rope_theta", theta)

    @property
    def is_paper(self) -> bool:
        """Whether this is the paper's model (every field at its default)."""
        return self == Arch()

    def replace(self, **changes) -> Arch:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values (JSON, the model file's metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Arch:
        """The inverse of :meth:`to_dict`; ``ValueError`` naming an unknown key."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"arch: unknown field {key!r}; expected some of {', '.join(sorted(known))}")
        return cls(**dict(d))

    def names(self) -> list:
        """The block names of docs/spec.md section 4 this architecture uses (``glu``, ``rope``, ...)."""
        out = []
        if self.norm == "layer":
            out.append("layernorm")
        if self.mlp == "gated":
            out.append("glu")
        if self.act != "relu":
            out.append(self.act)
        if self.positions != "learned":
            out.append(self.positions if self.positions == "rope" else "no_positions")
        if self.positions == "rope" and self.rope_layout == "interleaved":
            out.append("interleaved")
        if self.mlp_bias is False:
            out.append("no_mlp_bias")
        if self.qkv_bias or self.o_bias:
            out.append("bias")
        if self.final_norm:
            out.append("final_norm")
        if self.tied:
            out.append("tied")
        return out


#: ``fpt-ref init --arch NAME``: the paper's model and the architectures people grow
PRESETS: Mapping[str, Arch] = MappingProxyType(
    {
        "paper": Arch(),
        "llama": Arch(mlp="gated", act="silu", mlp_bias=False, positions="rope", rope_layout="half", final_norm=True),
        "qwen2": Arch(
            mlp="gated",
            act="silu",
            mlp_bias=False,
            positions="rope",
            rope_layout="half",
            final_norm=True,
            qkv_bias=True,
        ),
        "gpt2": Arch(
            norm="layer",
            act="gelu_tanh",
            mlp_bias=True,
            positions="learned",
            qkv_bias=True,
            o_bias=True,
            final_norm=True,
            tied=True,
        ),
    }
)


@dataclass(frozen=True)
class Recipe:
    """One row of the table block x expansion -> constraint set (docs/spec.md section 4).

    ``proof`` is the name of the claim ``fpt-ref prove --all`` proves for it (a prefix of the
    names it prints, ``EXPANSION/VARIANT``); ``refused`` is the reason the expansion refuses
    this block when no exact recipe exists (then ``constraint`` says what would be needed).
    """

    expansion: str
    block: str
    constraint: str
    proof: str
    refused: str = ""


def _r(expansion, block, constraint, proof, refused=""):
    return Recipe(expansion, block, constraint, proof, refused)


#: block x expansion -> constraint set, with the proving claim. Blocks not listed for an
#: expansion are untouched by it and keep the paper's constraint set.
RECIPES: tuple[Recipe, ...] = (
    _r("mlp", "act", "M_l2 = 0; or M_l1 = 0 and m_b_l1 = 0 (act(0) = 0 for every activation)", "mlp/act"),
    _r(
        "mlp",
        "glu",
        "one of: new W_l2 (down) rows = 0; new W_l1 (up) columns and up-bias entries = 0; "
        "new W_gate columns and gate-bias entries = 0 (act(0) = 0)",
        "mlp/glu",
    ),
    _r("mlp", "bias", "as without biases: new b_l1 (and b_gate) entries free with M_l2 = 0", "mlp/bias"),
    _r("add_heads", "bias", "M_O = 0; the new head's b_q, b_k, b_v free; b_o unchanged", "add_heads/bias"),
    _r("add_heads", "rope", "M_O = 0 (RoPE acts within each head)", "add_heads/rope"),
    _r(
        "add_heads",
        "gqa",
        "new query heads at the end of every group, reading that group's keys and values, M_O = 0; "
        "or a whole new group (one key/value head and its query heads), M_O = 0",
        "add_heads/gqa",
    ),
    _r("heads", "bias", "M_O = 0 with new b_v entries free; or M_V = 0 with new b_v entries = 0", "heads/bias"),
    _r(
        "heads",
        "gqa",
        "the group's shared W_V grows: M_V free; M_O = 0 in every query head of the group",
        "heads/gqa",
    ),
    _r(
        "attention",
        "bias",
        "M_K = 0 and new b_k entries = 0; W_K and b_k x sqrt(k^/k); new b_q entries free (or the mirror)",
        "attention/bias",
    ),
    _r(
        "attention",
        "rope",
        "old pairs stay pairs (half: new pairs in the gaps, interleaved: appended); theta -> theta^(k^/k); "
        "M_K = 0, W_K x sqrt(k^/k); every head of the model grows from one k to one k^ (theta is shared)",
        "attention/rope",
    ),
    _r(
        "attention",
        "gqa",
        "the group's shared W_K: M_K = 0 and x sqrt(k^/k); M_Q free in every query head (or the mirror)",
        "attention/gqa",
    ),
    _r(
        "hidden",
        "layernorm",
        "every writer of the residual stream (embed, pos, W_O, b_o, W_l2, b_l2) gets new columns equal to "
        "the row mean of its old ones; gains x sqrt(h/h^), eps x h/h^; new gain entries free, new bias "
        "entries = 0",
        "hidden/layernorm",
    ),
    _r(
        "hidden",
        "final_norm",
        "final gain x sqrt(h/h^) (eps x h/h^ as every norm); new entries free",
        "hidden/final_norm",
    ),
    _r(
        "hidden",
        "tied",
        "RMSNorm: the new embedding columns are 0, so the new output rows are 0 (allowed: they are free); "
        "LayerNorm: the new output rows are the embedding's row means, exact behind the final norm",
        "hidden/tied",
    ),
    _r("hidden", "glu", "new W_gate rows free, like W_l1", "hidden/glu"),
    _r("hidden", "bias", "new b_o entries = 0 (LayerNorm: the row mean); b_q, b_k, b_v unchanged", "hidden/bias"),
    _r("hidden", "rope", "unchanged: RoPE acts on queries and keys, not on the stream", "hidden/rope"),
    _r("add_layer", "glu", "W_O = 0, W_l2 (down) = 0, b_l2 = 0", "add_layer/glu"),
    _r("add_layer", "bias", "also b_o = 0; b_q, b_k, b_v free", "add_layer/bias"),
    _r("add_layer", "layernorm", "as RMSNorm; the new layer's norm biases free", "add_layer/layernorm"),
    _r("add_layer", "rope", "unchanged (RoPE has no parameters)", "add_layer/rope"),
    _r(
        "hidden",
        "layernorm+tied",
        "none without a final norm: the mean-padded stream reaches the tied output",
        "hidden/layernorm_tied",
        refused="LayerNorm with a tied output and no final norm: the new stream columns hold the row mean, "
        "and the tied output rows (the embedding's new columns) cannot be zero",
    ),
)

#: tempting recipes that are not exact; ``fpt-ref prove --all`` must refute each (claim name -> what it is)
WRONG_RECIPES: Mapping[str, str] = MappingProxyType(
    {
        "hidden/layernorm:zero_pad": "LayerNorm hidden growth by the paper's zero padding",
        "attention/rope:append": "RoPE key growth by appending columns (theta kept)",
        "attention/rope:keep_theta": "RoPE key growth with the old pairs kept but theta unchanged",
        "add_heads/gqa:append": "a new query head appended at the end of a grouped-query layer",
        "attention/bias:unscaled": "key growth with W_K scaled but b_k not (with RoPE; without RoPE the key bias "
        "shifts each softmax row by a constant and the recipe is exact)",
        "add_layer/bias:b_o_free": "a new layer whose attention output bias is not zero",
        "mlp/glu:none": "gated MLP growth with no zero block",
    }
)


#: a constraint set: (blocks constrained to zero, scalings applied, blocks constrained to the row mean)
ConstraintSet = tuple  # (frozenset[str], frozenset[str], frozenset[str])

_HIDDEN_WRITERS = frozenset({"M_I", "M_P", "M_O", "M_l2", "m_b_l2", "m_b_O"})


def constraint_sets(op: str, arch: Arch) -> tuple:
    """Every constraint set that makes expansion ``op`` exact on ``arch`` (docs/spec.md 2, 4.2).

    Each is ``(zero, scalings, mean)``: new blocks (names of :data:`fpt_ref.paper.EXPANSIONS`
    rows) that must be entirely zero, scalings (:data:`fpt_ref.paper.SCALED_TENSORS`) that
    must be applied, and new blocks that must hold the row mean of the block they extend. A
    block a model cannot have (no bias, no gate) is not required. For the paper's model these
    are the paper row's minimal sets; each other set is the recipe of a :data:`RECIPES` row
    (with its alternatives), proved by that row's claim.
    """
    from .paper import expansion

    row = expansion(op)
    none: frozenset = frozenset()
    if arch.is_paper:
        return tuple((z, sc, none) for z, sc in row.minimal)
    f = frozenset
    if op == "mlp":
        sets = [f({"M_l2"}), f({"M_l1", "m_b_l1"})] + ([f({"M_gate", "m_b_gate"})] if arch.mlp == "gated" else [])
        return tuple((z, none, none) for z in sets)
    if op == "add_heads":
        return ((f({"M_O"}), none, none), (f({"W_V_new", "b_V_new"}), none, none))
    if op == "heads":
        return ((f({"M_O"}), none, none), (f({"M_V", "m_b_V"}), none, none))
    if op == "attention":
        return tuple((f({z, "m_b_" + z[-1]}), f({sc}), none) for sc in ("W_K", "W_Q") for z in ("M_K", "M_Q"))
    if op == "hidden":
        scalings = f({"g", "eps"})
        if arch.norm == "layer":
            zero = {"m_beta"} | (set() if arch.final_norm or arch.tied else {"M_out"})
            return ((f(zero), scalings, _HIDDEN_WRITERS),)
        return ((row.zero | {"m_b_O"}, scalings, none),)
    if op == "add_layer":
        return ((f({"W_O", "b_O", "W_l2", "b_l2"}), none, none),)
    raise ValueError(f"op: unknown expansion {op!r}")

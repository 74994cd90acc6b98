"""The catalogue of reference-vector cases.

A *config* gives the base dimensions (``tiny``, ``small`` or a JSON file). Four *families* of
the paper's model (docs/spec.md section 1) vary what the paper leaves open, so that every pair
of options occurs at least once:

============== ======== ====== ======== ==========================
family         inputs   causal norm eps layers
============== ======== ====== ======== ==========================
tok-causal-eps tokens   yes    > 0      equal
tok-full-eps0  tokens   no     0        heterogeneous (p, E, k, v)
real-causal    real     yes    0        equal
real-full-eps  real     no     > 0      heterogeneous (p, E, k, v)
============== ======== ====== ======== ==========================

Each family has the base model, each of the six expansions applied alone to the base
(``mlp``, ``add_heads``, ``heads``, ``attention``, ``hidden``, ``add_layer``), and every
step of one composed plan of all six (``plan.1-mlp`` ... ``plan.6-add_layer``, each the
child of the one before). Single expansions act on one layer or head where they can, so
heads and layers become heterogeneous.

Three more families use the blocks of real transformers (docs/spec.md section 4,
:data:`fpt_ref.blocks.PRESETS`), token inputs, causal attention, ``eps > 0``, equal layers and
an output over the vocabulary (``o = vocab``), so that a Hugging Face config can express their
base and most steps of their plan (docs/vectors.md, "Hugging Face layout"):

====== ============================================== ==========================================
family blocks                                         attention
====== ============================================== ==========================================
llama  RMSNorm, gated SiLU, RoPE (half), final norm   grouped-query, ``kv_heads = E/2`` per layer
qwen2  llama plus q/k/v biases                        multi-query (one key/value head per layer)
gpt2   LayerNorm, tanh-GELU, biases, tied output      multi-head
====== ============================================== ==========================================

They have ``E = 2 * heads`` query heads (``llama``, ``qwen2``) and an even ``k`` (RoPE
rotates pairs). Their expansions follow docs/spec.md section 4.2: ``add_heads`` adds one query
head per group (single) or doubles the groups of every layer (plan), ``heads`` grows whole
groups, ``attention`` grows every head of every layer at once on RoPE, ``hidden`` mean-pads on
LayerNorm, the MLP expansions use each zero set of the gated MLP. The single expansions act on
one layer or head where they can (heterogeneous layers and heads); the plan grows every layer
and head alike, so that ``k = v`` again after its ``attention`` step (and, for ``gpt2``,
``h = heads x k`` after its ``hidden`` step). :func:`families` selects families by
architecture (``paper`` is the four above).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from ..blocks import PRESETS
from ..checks import is_int
from ..model import Model
from ..paper import NAMES

#: the six expansions, in the paper's order (:data:`fpt_ref.paper.NAMES`)
EXPANSIONS = NAMES


@dataclass(frozen=True)
class Config:
    """Base dimensions of the vectors (paper symbols) and the inputs' ``batch`` x ``seq``.

    ``eps`` is the norm epsilon of the families with ``eps > 0``. ``plan`` optionally
    replaces the default composed plan (text form of :func:`fpt_ref.parse_plan`).
    """

    name: str = "tiny"
    h: int = 8
    p: int = 16
    heads: int = 2
    k: int = 4
    v: int = 4
    layers: int = 2
    out_dim: int = 6
    max_seq: int = 8
    vocab: int = 24
    batch: int = 2
    seq: int = 6
    eps: float = 1e-3
    plan: str | None = None

    def __post_init__(self):
        for f in fields(self):
            val = getattr(self, f.name)
            if f.name in ("name", "plan", "eps"):
                continue
            if not is_int(val) or val < 1:
                raise ValueError(f"config: {f.name} must be an integer >= 1, got {val!r}")
            object.__setattr__(self, f.name, int(val))  # a NumPy integer becomes a Python int (JSON)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"config: eps must be a number > 0 (the eps of the eps > 0 families), got {self.eps!r}")
        if self.out_dim < 2:
            raise ValueError(
                f"config: out_dim must be at least 2 (the argmax check needs two outputs), got {self.out_dim}"
            )
        if not math.isfinite(self.eps):
            raise ValueError(f"config: eps must be finite, got {self.eps!r}")
        if self.seq > self.max_seq:
            raise ValueError(f"config: seq={self.seq} exceeds max_seq={self.max_seq}")
        if self.plan is not None and not isinstance(self.plan, str):
            raise ValueError(f"config: plan must be plan text such as 'mlp p=48; hidden h=24', got {self.plan!r}")

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "tiny": Config(),
    "small": Config(
        name="small",
        h=32,
        p=64,
        heads=4,
        k=8,
        v=8,
        layers=3,
        out_dim=16,
        max_seq=16,
        vocab=64,
        batch=3,
        seq=12,
        eps=1e-3,
    ),
}


def load_config(spec: str) -> Config:
    """``tiny``, ``small``, or a JSON file whose keys override ``tiny``'s (keys: :class:`Config`)."""
    if spec in CONFIGS:
        return CONFIGS[spec]
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"spec: {spec!r} is neither tiny, small nor an existing JSON file")
    try:
        with open(spec) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"spec: {spec}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"spec: {spec}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"spec: {spec}: unknown keys {unknown} (known: {sorted(known)})")
    data.setdefault("name", os.path.splitext(os.path.basename(spec))[0])
    return Config(**{**CONFIGS["tiny"].to_dict(), **data})


@dataclass(frozen=True)
class Family:
    """Options shared by a family of cases (module doc).

    ``arch`` is the preset of :data:`fpt_ref.blocks.PRESETS`; ``kv`` the key/value heads per
    layer: ``"all"`` (multi-head), ``"pairs"`` (``E/2``: groups of two query heads) or
    ``"mqa"`` (one key/value head).
    """

    name: str
    tokens: bool
    causal: bool
    eps: bool
    hetero: bool
    arch: str = "paper"
    kv: str = "all"


#: the families of the paper's model
FAMILIES = (
    Family("tok-causal-eps", tokens=True, causal=True, eps=True, hetero=False),
    Family("tok-full-eps0", tokens=True, causal=False, eps=False, hetero=True),
    Family("real-causal", tokens=False, causal=True, eps=False, hetero=False),
    Family("real-full-eps", tokens=False, causal=False, eps=True, hetero=True),
)
#: the families of the presets of real architectures (docs/spec.md section 4)
ARCH_FAMILIES = (
    Family("llama", tokens=True, causal=True, eps=True, hetero=False, arch="llama", kv="pairs"),
    Family("qwen2", tokens=True, causal=True, eps=True, hetero=False, arch="qwen2", kv="mqa"),
    Family("gpt2", tokens=True, causal=True, eps=True, hetero=False, arch="gpt2", kv="all"),
)
#: every family, in the order of their seeds (:func:`fpt_ref.vectors.write.family_seed`)
ALL_FAMILIES = FAMILIES + ARCH_FAMILIES
#: the architectures a family can have; ``paper`` selects :data:`FAMILIES`
ARCHS: tuple[str, ...] = tuple(PRESETS)


def parse_archs(archs) -> tuple:
    """The architectures named by ``archs``: a name, ``"all"``, comma-separated text or a list.

    Returns them in the order of :data:`ARCHS`, each once; ``ValueError`` naming ``archs`` for
    an unknown name or an empty selection.

    >>> parse_archs("gpt2,paper")
    ('paper', 'gpt2')
    >>> parse_archs("all")
    ('paper', 'llama', 'qwen2', 'gpt2')
    """
    items = archs.split(",") if isinstance(archs, str) else list(archs)
    names = {str(a).strip() for a in items} - {""}
    if "all" in names:
        names = (names - {"all"}) | set(ARCHS)
    unknown = sorted(names - set(ARCHS))
    if unknown or not names:
        raise ValueError(f"archs: expected some of {', '.join(ARCHS)} or all, got {archs!r}")
    return tuple(a for a in ARCHS if a in names)


def families(archs="paper") -> tuple:
    """The families of the architectures ``archs`` (:func:`parse_archs`), in :data:`ALL_FAMILIES` order."""
    chosen = parse_archs(archs)
    return tuple(f for f in ALL_FAMILIES if f.arch in chosen)


def base_kwargs(cfg: Config, fam: Family, seed: int) -> dict:
    """Arguments of :func:`fpt_ref.init_model` for the family's base model (float64).

    Heterogeneous families alternate per layer: ``p_n = p + (n mod 2) p/2``,
    ``E_n = heads + (n mod 2)``, ``k_n = k + 2 (n mod 2)``, ``v_n = v + 2 ((n+1) mod 2)``.
    Grouped families (``fam.kv`` not ``"all"``) have ``E = 2 heads``; RoPE families an even
    ``k`` (``k + k mod 2``). The families of real architectures have ``o = vocab`` (a Hugging
    Face causal LM's output is over its vocabulary).
    """
    N = cfg.layers
    p: int | list[int]
    heads: int | list[int]
    k: int | list[int]
    v: int | list[int]
    if fam.hetero:
        p = [cfg.p + (n % 2) * max(1, cfg.p // 2) for n in range(N)]
        heads = [cfg.heads + n % 2 for n in range(N)]
        k = [cfg.k + 2 * (n % 2) for n in range(N)]
        v = [cfg.v + 2 * ((n + 1) % 2) for n in range(N)]
    else:
        p, heads, k, v = cfg.p, cfg.heads, cfg.k, cfg.v
    arch = PRESETS[fam.arch]
    kv_heads: int | list[int] | None = None
    if fam.kv != "all":
        heads = 2 * cfg.heads
        kv_heads = cfg.heads if fam.kv == "pairs" else 1
    if arch.positions == "rope" and isinstance(k, int):
        k += k % 2
    extra = {} if fam.arch == "paper" else {"arch": fam.arch, "kv_heads": kv_heads}
    return dict(
        h=cfg.h,
        p=p,
        n_heads=heads,
        k=k,
        v=v,
        n_layers=N,
        out_dim=cfg.out_dim if fam.arch == "paper" else cfg.vocab,
        max_seq=cfg.max_seq,
        vocab=cfg.vocab if fam.tokens else None,
        eps=cfg.eps if fam.eps else 0.0,
        causal=fam.causal,
        dtype="float64",
        seed=seed,
        **extra,
    )


def _maxes(model: Model) -> tuple[int, int, int]:
    heads = [hd for layer in model.layers for hd in layer.heads]
    return (max(layer.p for layer in model.layers), max(hd.k for hd in heads), max(hd.v for hd in heads))


def _group(layer) -> tuple:
    """``(G, r)``: key/value heads and query heads per group of ``layer`` (``(E, 1)`` when not grouped)."""
    return (layer.G, layer.group_size) if layer.grouped else (layer.E, 1)


def _heads_text(layer) -> str:
    """The heads of the first group of ``layer`` (``0`` when not grouped): a whole group."""
    return ",".join(str(e) for e in range(_group(layer)[1]))


def single_steps(model: Model) -> dict:
    """Plan text of each expansion applied alone to ``model`` (the family's base).

    ``attention`` grows head 0 of the *last* layer, so an implementation that keeps the base
    model's ``1/sqrt(k)`` diverges first at ``residual.N``; ``add_heads`` and ``add_layer``
    use key/value sizes new to the model (heterogeneous heads).

    Real architectures (docs/spec.md section 4.2): in a grouped layer ``add_heads`` adds one
    query head at the end of each group (``count = kv_heads``, the group's key and value
    sizes) and ``heads`` grows the whole first group; on RoPE ``attention`` grows every head
    of every layer; a gated MLP with q/k/v biases (``qwen2``) is grown with ``zero=M_l1``;
    ``add_layer`` in a grouped model adds a grouped layer (``kv_heads=2``).
    """
    N, h = model.N, model.h
    p, k, v = _maxes(model)
    arch = model.arch
    if arch.is_paper:
        return {
            "mlp": f"mlp p={p + max(2, p // 2)} layers=0",
            "add_heads": f"add_heads count=1 layers={N - 1} k={k + 2} v={v + 2}",
            "heads": f"heads v={v + 2} layers=0 heads=0",
            "attention": f"attention k={k + 2} layers={N - 1} heads=0",
            "hidden": f"hidden h={h + max(2, h // 2)}",
            "add_layer": f"add_layer at={N // 2} p={p + 2} n_heads=2 k={k + 2} v={v}",
        }
    last, first = model.layers[N - 1], model.layers[0]
    zero = " zero=M_l1" if arch.mlp == "gated" and arch.qkv_bias else ""
    add_heads = (
        f"add_heads count={last.G} layers={N - 1}"
        if last.grouped
        else f"add_heads count=1 layers={N - 1} k={k + 2} v={v + 2}"
    )
    rope = arch.positions == "rope"
    attention = f"attention k={k + 2}" if rope else f"attention k={k + 2} layers={N - 1} heads=0"
    new_layer = "n_heads=4 kv_heads=2" if first.grouped else "n_heads=2"
    return {
        "mlp": f"mlp p={p + max(2, p // 2)} layers=0{zero}",
        "add_heads": add_heads,
        "heads": f"heads v={v + 2} layers=0 heads={_heads_text(first)}",
        "attention": attention,
        "hidden": f"hidden h={h + max(2, h // 2)}",
        "add_layer": f"add_layer at={N // 2} p={p + 2} {new_layer} k={k + 2} v={v}",
    }


def plan_steps(model: Model, cfg: Config) -> str:
    """The composed plan: all six expansions in sequence (or ``cfg.plan``).

    Real architectures: every step grows every layer and head alike, so that the steps after
    ``attention`` have one head count and ``k = v`` (a Hugging Face ``head_dim``). A gated MLP
    is grown with ``zero=M_gate``, a plain one with ``zero=M_l1``; grouped layers gain as many
    groups as they have (``groups=true``, ``E`` doubles); ``heads`` and ``attention`` grow every
    head by 2; ``hidden`` grows to ``h + max(2, h/2)`` rounded up to a multiple of the head
    count on RoPE (transformers' ``LlamaConfig`` requires it), and to ``n_head x head size``
    (GPT-2's ``n_embd``) on a multi-head model whose base has ``h = n_head x head size``.
    """
    if cfg.plan is not None:
        return cfg.plan
    N, h = model.N, model.h
    p, k, v = _maxes(model)
    arch = model.arch
    if arch.is_paper:
        return "; ".join(
            [
                f"mlp p={p + max(2, p // 2)}",
                f"add_heads count=1 layers={N - 1}",
                f"heads v={v + 2} layers={N - 1} heads=0",
                f"attention k={k + 2} layers=0",
                f"hidden h={h + max(2, h // 2)}",
                f"add_layer at={(N + 1) // 2}",
            ]
        )
    last = model.layers[N - 1]
    E, kk = len(last.heads), k + 2
    rope = arch.positions == "rope"
    # grouped: count = E query heads in whole groups doubles every layer's groups (h % E stays 0 for llama)
    add_heads = f"add_heads count={E} groups=true" if last.grouped else "add_heads count=1"
    E_end = 2 * E if last.grouped else E + 1
    h_end = h + max(2, h // 2)
    if rope:  # transformers' LlamaConfig wants hidden_size a multiple of the heads
        h_end = -(-h_end // E_end) * E_end
    elif h == E * k:  # GPT-2 whose base has n_embd = n_head x head size: so has the end
        h_end = E_end * kk
    return "; ".join(
        [
            f"mlp p={p + max(2, p // 2)} zero={'M_gate' if arch.mlp == 'gated' else 'M_l1'}",
            add_heads,
            f"heads v={v + 2}",
            f"attention k={kk}",
            f"hidden h={h_end}",
            f"add_layer at={(N + 1) // 2}",
        ]
    )

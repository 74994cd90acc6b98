"""The real-architecture claims: every row of :data:`fpt_ref.blocks.RECIPES` and every wrong recipe.

A claim applies one expansion, with one recipe, to an entry-level model built from the blocks
of docs/spec.md section 4.1 (:func:`proofs.blocks.arch_model`) and proves with the trusted
core that the expanded model computes the original function (``expect="proved"``), or
refutes it with numbers (``expect="refuted"``: the wrong recipes of
:data:`fpt_ref.blocks.WRONG_RECIPES` and the refused row ``hidden/layernorm_tied``).

Names are ``EXPANSION/BLOCK`` (a row's ``proof``), with ``:SUBVARIANT`` for the other exact
recipes of a row (``mlp/glu:up``) and for the wrong ones (``mlp/glu:none``); ``preset/NAME``
claims run the six expansions on the llama, qwen2 and gpt2 presets. Each claim's record says
which blocks its model has (``variant``), e.g. ``glu, silu, no_mlp_bias``.

Sizes are minimal (every width 2 or 3, one layer unless the claim needs two): these claims
are entry-level proofs at one size assignment each; docs/proofs.md says what that covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fpt_ref.blocks import PRESETS, RECIPES, WRONG_RECIPES, Arch

from . import blocks as Bk
from . import core as C
from .entries import prove_equal
from .minimal import minimal_supersets, screened
from .theorems import Level

PAPER = Arch()
GATED = Arch(mlp="gated", act="silu", mlp_bias=False)  # Llama's MLP
GATED_B = Arch(mlp="gated", act="silu")  # with biases
BIAS = Arch(qkv_bias=True, o_bias=True)
ROPE = Arch(positions="rope")
BIAS_ROPE = Arch(qkv_bias=True, positions="rope")  # Qwen2's attention
ROPE_I = Arch(positions="rope", rope_layout="interleaved")
GPT2 = PRESETS["gpt2"]
BASE = {"s": 2, "h": 2, "p": 2, "E": 1, "k": 2, "v": 2, "o": 2, "N": 1, "kv": None}
GROWS = {"mlp": "p", "add_heads": "E", "heads": "v", "attention": "k", "hidden": "h", "add_layer": "N"}
HIDDEN_ZERO = frozenset({"M_I", "M_P", "M_O", "m_b_o", "M_l2", "m_b_l2"})  # every writer's new columns


@dataclass(frozen=True)
class Claim:
    """One real-architecture claim: ``theorem`` (an expansion) with a recipe on a model of ``arch``.

    ``zero`` and ``scale`` are the recipe's zero blocks and scalings (:mod:`proofs.blocks`);
    ``options`` the builder's other choices (``mode``, ``rope_mode``, ``pad``); ``sizes``
    overrides :data:`BASE`; ``new`` is the grown size.
    """

    name: str
    theorem: str
    arch: Arch
    zero: frozenset
    scale: frozenset = frozenset()
    new: int = 0
    sizes: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    expect: str = "proved"
    eps: bool = False
    causal: bool = False
    note: str = ""

    @property
    def activation(self) -> str:
        return self.arch.act

    @property
    def row(self) -> str:
        """The recipe row (``RECIPES[...].proof``) or wrong recipe this claim belongs to."""
        return self.name.split(":", 1)[0]

    def all_sizes(self) -> dict:
        sz = dict(BASE)
        sz.update(self.sizes)
        g = GROWS[self.theorem]
        sz[g + "_new"] = self.new or sz[g] + 1
        return sz

    def blocks_text(self) -> str:
        names = self.arch.names()
        if self.all_sizes()["kv"]:
            names.append("gqa")
        if self.eps:
            names.append("eps")
        if self.causal:
            names.append("causal")
        return ", ".join(names) or "paper blocks"


def build(c: Claim, zero=None, prefix: str = ""):
    """``(base, expanded, blocks)`` of a claim (``zero`` overrides the claim's zero set)."""
    sz = c.all_sizes()
    base = Bk.arch_model(
        c.arch,
        **{k: sz[k] for k in ("s", "h", "p", "E", "k", "v", "o", "N")},
        kv=sz["kv"],
        eps=Bk.EPS if c.eps else 0,
        causal=c.causal,
    )
    z = set(c.zero if zero is None else zero)
    new = sz[GROWS[c.theorem] + "_new"]
    if c.theorem == "mlp":
        m, blocks = Bk.expand_mlp(base, new, z, prefix)
    elif c.theorem == "add_heads":
        count = new - sz["E"] if sz["kv"] is None else 1
        m, blocks = Bk.add_heads(base, z, prefix, count=count, **c.options)
    elif c.theorem == "heads":
        m, blocks = Bk.expand_heads(base, new, z, prefix)
    elif c.theorem == "attention":
        m, blocks = Bk.expand_attention(base, new, z, set(c.scale), prefix, **c.options)
    elif c.theorem == "hidden":
        m, blocks = Bk.expand_hidden(base, new, z, set(c.scale), prefix, **c.options)
    else:
        m, blocks = Bk.add_layer(base, sz["N"] // 2, z, prefix)
    return base, m, blocks


#: claims also proved at symbolic sizes: every row whose blocks the term language of
#: :mod:`proofs.core` covers (biases, groups, the gated MLP, tanh-GELU, final norm, tied output,
#: RoPE and LayerNorm where the expansion leaves them untouched); docs/proofs.md says why not the
#: others (RoPE key growth, LayerNorm hidden growth)
SYMBOLIC = (
    "mlp/act",
    "mlp/glu",
    "mlp/glu:up",
    "mlp/glu:gate",
    "mlp/bias",
    "add_heads/bias",
    "add_heads/rope",
    "add_heads/gqa",
    "heads/bias",
    "heads/gqa",
    "attention/bias",
    "attention/gqa",
    "hidden/final_norm",
    "hidden/tied",
    "hidden/glu",
    "hidden/bias",
    "hidden/rope",
    "add_layer/glu",
    "add_layer/bias",
    "add_layer/layernorm",
    "add_layer/rope",
)


def build_terms(c: Claim):
    """``(base, expanded, new layer indices)`` of a claim at symbolic sizes (:mod:`proofs.chains`):
    widths are size symbols, the grown one ``p^``, ``v^``, ``k^`` or ``h^``; two heads (the
    claim's heads and groups when it has more), two layers for the hidden expansion."""
    from . import chains as CH

    sz = c.all_sizes()
    N = 2 if c.theorem == "hidden" else sz["N"]
    base = Bk.arch_model(
        c.arch, E=max(2, sz["E"]), N=N, kv=sz["kv"], eps=CH.EPS if c.eps else 0, causal=c.causal, terms=True
    )
    z = set(c.zero)
    if c.theorem == "mlp":
        m = Bk.expand_mlp(base, CH.HAT["p"], z)[0]
    elif c.theorem == "add_heads":
        m = Bk.add_heads(base, z, count=1, **c.options)[0]
    elif c.theorem == "heads":
        m = Bk.expand_heads(base, CH.HAT["v"], z)[0]
    elif c.theorem == "attention":
        m = Bk.expand_attention(base, CH.HAT["k"], z, set(c.scale), **c.options)[0]
    elif c.theorem == "hidden":
        m = Bk.expand_hidden(base, CH.HAT["h"], z, set(c.scale), **c.options)[0]
    else:
        at = N // 2
        return base, Bk.add_layer(base, at, z)[0], (at,)
    return base, m, ()


def run_symbolic(c: Claim, entries_status: str | None = None) -> Level:
    """The symbolic-size level of a claim: lemmas generated for its recipe and glued by the core."""
    from . import chains as CH
    from .theorems import consistent

    t = time.perf_counter()
    try:
        base, expanded, new = build_terms(c)
        size_sets = CH.SIZE_SETS
        if base.rope is not None:  # RoPE needs an even key size at every explicit check
            size_sets = [{**sz, CH.k: 2, CH.kh: 4} for sz in CH.SIZE_SETS]
        chains, problems = CH.prove_models(c.theorem, base, expanded, new, c.activation, size_sets)
    except C.KernelError as e:
        chains, problems = [], [f"kernel check failed: {e}"]
    nsteps = sum(len(x.steps) for x in chains)
    z = ",".join(sorted(c.zero)) or "none"
    sc = ",".join(sorted(c.scale)) or "none"
    detail = f"zero {{{z}}} scale {{{sc}}}; "
    if not problems:
        status = "proved"
        detail += f"{len(chains)} lemmas, {nsteps} rewrite steps, glued and each checked at explicit entries; induction over layers checked"
    else:
        status = "refuted" if entries_status == "refuted" else "not proved"
        detail += problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    g = GROWS[c.theorem]
    sizes = {"s": "s", "h": "h", "p": "p", "k": "k", "v": "v", "o": "o"}
    sizes[g + "_new"] = {"p": "p^", "v": "v^", "k": "k^", "h": "h^", "E": "E+1", "N": "N+1"}[g]
    lv = Level(
        c.name,
        "symbolic",
        status,
        time.perf_counter() - t,
        detail,
        c.zero,
        c.scale,
        chains=chains,
        variant=c.blocks_text(),
        sizes=sizes,
        label=f"symbolic sizes {c.blocks_text()}",
    )
    return consistent(lv, entries_status == "refuted")


def _c(name, theorem, arch, zero, scale=(), **kw) -> Claim:
    return Claim(name, theorem, arch, frozenset(zero), frozenset(scale), **kw)


def _claims() -> list[Claim]:
    hz = HIDDEN_ZERO
    out = [
        # MLP
        _c("mlp/act", "mlp", Arch(act="gelu_tanh"), {"M_l2"}),
        _c("mlp/act:up", "mlp", Arch(act="gelu_tanh"), {"M_l1", "m_b_l1"}),
        _c("mlp/glu", "mlp", GATED, {"M_l2"}),
        _c("mlp/glu:up", "mlp", GATED_B, {"M_l1", "m_b_l1"}),
        _c("mlp/glu:gate", "mlp", GATED_B, {"M_gate", "m_b_gate"}),
        _c("mlp/glu:gate_relu", "mlp", GATED_B.replace(act="relu"), {"M_gate", "m_b_gate"}),
        _c("mlp/bias", "mlp", GATED_B, {"M_l2"}),
        _c("mlp/bias:none", "mlp", Arch(mlp_bias=False), {"M_l2"}),
        _c("mlp/glu:none", "mlp", GATED_B, set(), expect="refuted"),
        # head addition
        _c("add_heads/bias", "add_heads", BIAS, {"M_O"}),
        _c("add_heads/rope", "add_heads", ROPE, {"M_O"}),
        _c("add_heads/rope:interleaved", "add_heads", ROPE_I, {"M_O"}),
        _c("add_heads/gqa", "add_heads", PAPER, {"M_O"}, sizes={"E": 4, "kv": 2}, new=6, options={"mode": "per_group"}),
        _c(
            "add_heads/gqa:new_group",
            "add_heads",
            PAPER,
            {"M_O"},
            sizes={"E": 4, "kv": 2},
            new=6,
            options={"mode": "new_group"},
        ),
        _c(
            "add_heads/gqa:append",
            "add_heads",
            PAPER,
            {"M_O"},
            sizes={"E": 4, "kv": 2},
            new=6,
            options={"mode": "append"},
            expect="refuted",
        ),
        # heads expansion
        _c("heads/bias", "heads", BIAS, {"M_O"}),
        _c("heads/bias:input", "heads", BIAS, {"M_V", "m_b_v"}),
        _c("heads/gqa", "heads", PAPER, {"M_O"}, sizes={"E": 2, "kv": 1}),
        # attention expansion
        _c("attention/bias", "attention", BIAS, {"M_K", "m_b_k"}, {"W_K", "b_k"}),
        _c("attention/bias:mirror", "attention", BIAS, {"M_Q", "m_b_q"}, {"W_Q", "b_q"}),
        _c("attention/bias:rope", "attention", BIAS_ROPE, {"M_K", "m_b_k"}, {"W_K", "b_k", "theta"}, new=4),
        _c(
            "attention/bias:unscaled",
            "attention",
            BIAS_ROPE,
            {"M_K", "m_b_k"},
            {"W_K", "theta"},
            new=4,
            expect="refuted",
            note="with RoPE: without it the key bias adds a constant to every logit of a row",
        ),
        _c("attention/rope", "attention", ROPE, {"M_K"}, {"W_K", "theta"}, sizes={"k": 4}, new=6),
        _c("attention/rope:interleaved", "attention", ROPE_I, {"M_K"}, {"W_K", "theta"}, sizes={"k": 4}, new=6),
        _c(
            "attention/rope:append",
            "attention",
            ROPE,
            {"M_K"},
            {"W_K"},
            sizes={"k": 4},
            new=6,
            options={"rope_mode": "append"},
            expect="refuted",
        ),
        _c("attention/rope:keep_theta", "attention", ROPE, {"M_K"}, {"W_K"}, sizes={"k": 4}, new=6, expect="refuted"),
        _c("attention/gqa", "attention", PAPER, {"M_K"}, {"W_K"}, sizes={"E": 2, "kv": 1}),
        # hidden dimension expansion
        _c(
            "hidden/layernorm",
            "hidden",
            GPT2,
            {"m_beta"},
            {"g", "eps"},
            eps=True,
            options={"pad": "mean"},
            new=4,
            sizes={"N": 2},
            note="gpt2 blocks",
        ),
        _c(
            "hidden/layernorm:untied",
            "hidden",
            Arch(norm="layer"),
            {"m_beta", "M_out"},
            {"g", "eps"},
            eps=True,
            options={"pad": "mean"},
            new=4,
        ),
        _c(
            "hidden/layernorm:zero_pad",
            "hidden",
            GPT2,
            hz | {"m_beta"},
            {"g", "eps"},
            eps=True,
            new=4,
            expect="refuted",
        ),
        _c(
            "hidden/layernorm_tied",
            "hidden",
            GPT2.replace(final_norm=False),
            {"m_beta"},
            {"g", "eps"},
            eps=True,
            options={"pad": "mean"},
            new=4,
            expect="refuted",
        ),
        _c("hidden/final_norm", "hidden", Arch(final_norm=True), hz, {"g", "eps"}, eps=True, new=4),
        _c("hidden/tied", "hidden", Arch(tied=True), hz, {"g"}, new=4),
        _c("hidden/glu", "hidden", GATED, hz, {"g"}),
        _c("hidden/bias", "hidden", BIAS, hz, {"g"}),
        _c("hidden/rope", "hidden", ROPE, hz, {"g"}),
        # layer addition
        _c("add_layer/glu", "add_layer", GATED, {"W_O", "W_l2"}),
        _c("add_layer/bias", "add_layer", BIAS, {"W_O", "b_o", "W_l2", "b_l2"}),
        _c("add_layer/bias:b_o_free", "add_layer", BIAS, {"W_O", "W_l2", "b_l2"}, expect="refuted"),
        _c("add_layer/layernorm", "add_layer", Arch(norm="layer"), {"W_O", "W_l2", "b_l2"}),
        _c("add_layer/rope", "add_layer", ROPE, {"W_O", "W_l2", "b_l2"}),
    ]
    return out


def _preset_claims() -> list[Claim]:
    """The six expansions (the recipes above) on the llama, qwen2 and gpt2 presets (causal, eps > 0)."""
    out = []
    for name in ("llama", "qwen2", "gpt2"):
        a = PRESETS[name]
        ln, bias = a.norm == "layer", a.mlp_bias
        zero_hidden = {"m_beta"} if ln else set(HIDDEN_ZERO)
        rope = a.positions == "rope"
        out += [
            _c(f"preset/{name}:mlp", "mlp", a, {"M_l2"}, eps=True, causal=True),
            _c(f"preset/{name}:add_heads", "add_heads", a, {"M_O"}, eps=True, causal=True),
            _c(f"preset/{name}:heads", "heads", a, {"M_O"}, eps=True, causal=True),
            _c(
                f"preset/{name}:attention",
                "attention",
                a,
                {"M_K", "m_b_k"},
                {"W_K", "b_k"} | ({"theta"} if rope else set()),
                sizes={"k": 2},
                new=4,
                eps=True,
                causal=True,
            ),
            _c(
                f"preset/{name}:hidden",
                "hidden",
                a,
                zero_hidden,
                {"g", "eps"},
                eps=True,
                causal=True,
                options={"pad": "mean" if ln else "zero"},
            ),
            _c(
                f"preset/{name}:add_layer",
                "add_layer",
                a,
                {"W_O", "W_l2"} | ({"b_l2"} if bias else set()) | ({"b_o"} if a.o_bias else set()),
                eps=True,
                causal=True,
            ),
        ]
    return out


CLAIMS: list[Claim] = _claims() + _preset_claims()
BY_NAME = {c.name: c for c in CLAIMS}

#: minimal-set searches: group -> (the claim whose model, sizes and scalings are used, the new
#: blocks searched; every other new block stays free). attention/bias runs on Qwen2's attention
#: (biases and RoPE): without RoPE a constant key column adds the same number to every logit of
#: a row, which the softmax ignores, so {M_K} alone is also exact there, and the kernel, which
#: has no shift-invariance rule, could only report it undecided.
SEARCHES = {
    "mlp/glu": ("mlp/glu:up", ["M_l1", "m_b_l1", "M_gate", "m_b_gate", "M_l2"]),
    "heads/bias": ("heads/bias", ["M_V", "m_b_v", "M_O"]),
    "attention/bias": ("attention/bias:rope", ["M_Q", "m_b_q", "M_K", "m_b_k"]),
}


def groups() -> list[str]:
    """Claim groups in order: a row's name with its sub-variants (``mlp/glu`` holds ``mlp/glu:up``)."""
    return list(dict.fromkeys(c.row for c in CLAIMS))


def claims_of(group: str) -> list[Claim]:
    return [c for c in CLAIMS if c.row == group]


def run_claim(c: Claim) -> Level:
    """Prove (or refute) one claim at the entry level."""
    t = time.perf_counter()
    base, expanded, blocks = build(c)
    r = prove_equal(base, expanded, c.activation, blocks)
    sz = c.all_sizes()
    g = GROWS[c.theorem]
    z = ",".join(sorted(c.zero)) or "none"
    sc = ",".join(sorted(c.scale)) or "none"
    opts = "".join(f" {k}={v}" for k, v in c.options.items())
    detail = f"zero {{{z}}} scale {{{sc}}}{opts}; {g} {sz[g]}->{sz[g + '_new']}"
    if r.status == "proved":
        detail += f"; free blocks: {', '.join(r.free_blocks) or 'none'}; {r.atoms} stand-ins"
    elif r.counterexample:
        detail += "; " + r.counterexample.line()
    else:
        detail += f"; {r.reason or f'{r.residual_terms} output entries did not reduce to 0'}"
    if c.expect == "refuted":
        what = WRONG_RECIPES.get(c.name) or _refused(c.name) or "a recipe that is not exact"
        detail = f"{what}: {detail}"
    sizes = {k: v for k, v in sz.items() if v is not None}
    return Level(
        c.name,
        "entries",
        r.status,
        time.perf_counter() - t,
        detail,
        c.zero,
        c.scale,
        r.free_blocks,
        r,
        variant=c.blocks_text(),
        sizes=sizes,
        label=f"entries {c.blocks_text()} {g}{sz[g]}->{sz[g + '_new']}",
    )


def _refused(name: str) -> str:
    for row in RECIPES:
        if row.proof == name and row.refused:
            return "refused: " + row.refused
    return ""


@dataclass
class VSearch:
    """All minimal zero sets of one claim's new blocks (the others free), at the claim's sizes."""

    theorem: str
    label: str
    blocks: list
    activation: str
    minimal: list = field(default_factory=list)
    undecided: list = field(default_factory=list)
    checks: int = 0
    seconds: float = 0.0
    scale: frozenset = frozenset()
    sizes: dict = field(default_factory=dict)

    def sets_text(self) -> str:
        if not self.minimal:
            return "none (no set of zero blocks preserves the function)"
        return "; ".join("{" + ", ".join(sorted(m, key=self.blocks.index)) + "}" for m in self.minimal)


def search(name: str) -> VSearch:
    """Minimal sets by increasing size (supersets of a found set skipped); each candidate decided by
    a float64 screen (refuted) or the entry-level proof (proved, or refuted with numbers)."""
    t = time.perf_counter()
    like, names = SEARCHES[name]
    c = BY_NAME[like]
    out = VSearch(name, f"{c.blocks_text()}, scale {{{','.join(sorted(c.scale)) or 'none'}}}", names, c.activation)
    out.scale = c.scale
    out.sizes = {k: v for k, v in c.all_sizes().items() if v is not None}
    memo: dict = {}

    def decide(S: frozenset) -> str:
        if S not in memo:
            base, expanded, blocks = build(c, zero=S)
            memo[S] = screened(base, expanded, c.activation, blocks)
        return memo[S]

    minimal_supersets(frozenset(), list(names), decide, out.minimal, out.undecided)
    out.checks = len(memo)
    out.seconds = time.perf_counter() - t
    return out


def run(groups_: list[str], minimal: bool = False):
    """``(levels, drops, searches, seconds)`` of the named claim groups (or single claims): proofs
    expected to hold in ``levels``, claims expected to be refuted in ``drops``."""
    levels, drops, found, seconds = [], [], [], {}
    for gname in groups_:
        t = time.perf_counter()
        for c in claims_of(gname) if gname in groups() else [BY_NAME[gname]]:
            lv = run_claim(c)
            (drops if c.expect == "refuted" else levels).append(lv)
            if c.name in SYMBOLIC:
                levels.append(run_symbolic(c, lv.status))
        if minimal and gname in SEARCHES:
            found.append(search(gname))
        seconds[gname] = time.perf_counter() - t
    return levels, drops, found, seconds

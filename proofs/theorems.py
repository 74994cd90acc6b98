"""The claims the checker proves: Theorems 3.1-3.6, epsilon, composition; one runner per level.

A claim is (theorem, zero blocks, scalings) at one level:

- ``entries``: explicit entries at one size assignment (:func:`default_sizes` gives two per
  theorem: every width 2 grown by one, and every width 3 grown by two), under one variant
  (activation and mask);
- ``symbolic``: symbolic sizes, a generated and glued chain of lemmas (:mod:`proofs.chains`);
- ``crosscheck``: the symbolic models against ``fpt_ref.forward`` at random numbers.

Names, titles, block names, zero sets and scalings are read from :mod:`fpt_ref.paper` (via
:mod:`proofs.expand`); ``eps`` is the hidden row with ``eps > 0``, ``compose`` the six in turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sympy as sp

from fpt_ref.checks import is_int
from fpt_ref.paper import EXPANSIONS, NAMES

from . import expand as X
from .chains import prove_chains, prove_compose
from .entries import EntryResult, prove_equal
from .symbolic import base_model

SIX = list(NAMES)
ORDER = SIX + ["eps", "compose"]
EPS = sp.Symbol("eps", positive=True)
SIZE_NAMES = ("s", "h", "p", "E", "k", "v", "o", "N")  # old sizes; grown ones are NAME_new
MAX_SIZE = 8  # entry-level proofs grow fast with the sizes; larger ones are refused


def _row(name: str):
    return EXPANSIONS["hidden" if name == "eps" else name]


@dataclass(frozen=True)
class Theorem:
    name: str
    title: str
    grows: str  # the size it grows (paper symbol: p, E, v, k, h, N)
    N: int  # layers of the base model
    eps: object  # norm epsilon of the base model

    @property
    def blocks(self) -> dict:
        return X.BLOCKS[self.name]

    @property
    def scalings(self) -> dict:
        return X.SCALINGS[self.name]

    @property
    def paper(self):
        z, sc = X.PAPER[self.name]
        return frozenset(z), frozenset(sc)


def _theorem(name: str) -> Theorem:
    row = _row(name)
    title = f"{row.theorem} {row.title}" if name != "eps" else "RMSNorm epsilon in the hidden expansion"
    deep = name in ("hidden", "eps")
    return Theorem(name, title, row.grows[0], 2 if deep else 1, EPS if name == "eps" else 0)


THEOREMS = {name: _theorem(name) for name in SIX + ["eps"]}


def default_sizes(theorem: str) -> list[dict]:
    """Two size assignments: widths 2 grown by one; widths 3 grown by two (counts: 1 grown by 1, 2)."""
    th = THEOREMS[theorem]
    small = {"s": 2, "h": 2, "p": 2, "E": 1, "k": 2, "v": 2, "o": 2, "N": th.N}
    wide = {"s": 2, "h": 3, "p": 3, "E": 1, "k": 3, "v": 3, "o": 2, "N": th.N}
    small[th.grows + "_new"] = small[th.grows] + 1
    wide[th.grows + "_new"] = wide[th.grows] + 2
    return [small, wide]


def check_sizes(theorem: str, sizes: dict) -> dict:
    """A full size assignment for ``theorem`` from ``sizes`` (defaults: the first of :func:`default_sizes`).

    ``sizes`` maps old sizes (``h``) and the grown one (``h_new``) to integers; names that
    belong to another theorem's growth are ignored. ``ValueError`` naming ``sizes`` otherwise.
    """
    th = THEOREMS[theorem]
    grown = {EXPANSIONS[n].grows[0] + "_new" for n in SIX}
    out = dict(default_sizes(theorem)[0])
    for name, value in sizes.items():
        if name not in SIZE_NAMES and name not in grown:
            raise ValueError(
                f"sizes: unknown size {name!r}; choose from {', '.join(SIZE_NAMES + tuple(sorted(grown)))}"
            )
        if not is_int(value) or not 1 <= value <= MAX_SIZE:
            raise ValueError(f"sizes: {name} must be an integer from 1 to {MAX_SIZE}, got {value!r}")
        if name.endswith("_new") and name != th.grows + "_new":
            continue
        out[name] = int(value)
    g = th.grows
    if g + "_new" not in sizes:
        if out[g] + 1 > MAX_SIZE:
            raise ValueError(f"sizes: {g} must be at most {MAX_SIZE - 1} to leave room for {g}_new, got {out[g]}")
        out[g + "_new"] = out[g] + 1
    if out[g + "_new"] <= out[g]:
        raise ValueError(f"sizes: {g}_new must exceed {g} ({out[g]}), got {out[g + '_new']}")
    if theorem in ("hidden", "eps") and "N" not in sizes:
        out["N"] = th.N
    return out


def build_entries(theorem: str, sizes: dict, zero, scale, causal: bool = False, prefix: str = ""):
    """``(base, expanded, blocks)``: the entry-level models of one theorem at one size assignment."""
    th = THEOREMS[theorem]
    base = base_model(
        s=sizes["s"],
        h=sizes["h"],
        p=sizes["p"],
        E=sizes["E"],
        k=sizes["k"],
        v=sizes["v"],
        o=sizes["o"],
        N=sizes["N"],
        eps=th.eps,
        causal=causal,
    )
    z, sc = set(zero), set(scale)
    g = th.grows
    new = sizes[g + "_new"]
    if g == "p":
        m, blocks = X.expand_mlp(base, new, z, sc, prefix)
    elif g == "E":
        m, blocks = X.add_heads(base, sizes["k"], sizes["v"], z, sc, prefix, count=new - sizes["E"])
    elif g == "v":
        m, blocks = X.expand_heads(base, new, z, sc, prefix)
    elif g == "k":
        m, blocks = X.expand_attention(base, new, z, sc, prefix)
    elif g == "h":
        m, blocks = X.expand_hidden(base, new, z, sc, prefix)
    else:
        m, blocks = X.add_layer(
            base, 0, sizes["p"], sizes["E"], sizes["k"], sizes["v"], z, sc, prefix, count=new - sizes["N"]
        )
    return base, m, blocks


# entry-level variants every theorem is proved under: (label, activation, causal)
SETTINGS = [
    ("ReLU", "relu", False),
    ("causal GELU", "gelu", True),
    ("causal SiLU", "silu", True),
]


def _searches(name: str) -> list:
    """Minimal-set searches of one theorem: ``[(label, scalings, activation), ...]``.

    The paper's scalings; each of them swapped for another scaling of the row (the mirror
    image, ``W_Q`` for ``W_K``); each of them dropped. The MLP also with the generic
    activation ``f`` (``f(0) = 0`` is what makes ``{M_l1, m_b_l1}`` work).
    """
    th = THEOREMS[name]
    P = th.paper[1]
    sets = [P] + [(P - {x}) | {y} for x in sorted(P) for y in th.scalings if y not in P]
    sets += [P - {x} for x in sorted(P)]
    sets = list(dict.fromkeys(frozenset(s) for s in sets))
    out = []
    for S in sets:
        label = (", ".join(sorted(S)) + " scaled") if S else ("no scaling" if th.scalings else "")
        out.append((label, S, "relu"))
    if th.grows == "p":
        out = [("ReLU", P, "relu"), ("any activation f", P, "f")]
    return out


# minimal-set searches: theorem -> [(label, scalings, activation)]
SEARCHES = {name: _searches(name) for name in THEOREMS}


@dataclass
class Level:
    """One claim and its verdict (one line of output, one JSON record)."""

    theorem: str
    level: str  # "symbolic" | "entries" | "crosscheck"
    status: str  # proved | refuted | not proved
    seconds: float
    detail: str = ""
    zero: frozenset = frozenset()
    scale: frozenset = frozenset()
    free: list = field(default_factory=list)
    result: EntryResult | None = None
    chains: list = field(default_factory=list)
    variant: str = ""
    sizes: dict = field(default_factory=dict)
    label: str = ""  # the text report's second column

    @property
    def name(self) -> str:
        return self.label or f"{self.level} {self.variant}".strip()


def parse_constraints(theorem: str, zero: str | None, scale: str | None):
    """Text lists of block names (``"M_l1,m_b_l1"``, ``"none"``) -> (zero set, scale set).

    ``ValueError`` naming the parameter (``zero`` or ``scale``) on an unknown name.
    """
    th = THEOREMS.get(theorem)
    if th is None:
        raise ValueError(f"theorem: need exactly one of {', '.join(THEOREMS)}, got {theorem!r}")
    z, sc = th.paper

    def names(text, valid, what):
        if text.strip().lower() == "none":
            return frozenset()
        got = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in got if t not in valid]
        if bad or not got:
            raise ValueError(
                f"{what}: unknown name(s) {', '.join(bad) or repr(text)} for {theorem}; "
                f"valid: {', '.join(valid) or '(none)'} or 'none'"
            )
        return frozenset(got)

    if zero is not None:
        z = names(zero, list(th.blocks), "zero")
    if scale is not None:
        sc = names(scale, list(th.scalings), "scale")
    return z, sc


def entry_claim(theorem: str, zero, scale, activation="relu", causal=False, refute=True, sizes=None) -> EntryResult:
    """Prove (or refute) preservation of one theorem's expansion under one constraint set.

    ``sizes``: a size assignment (:func:`check_sizes`); default the first of :func:`default_sizes`.
    """
    sz = check_sizes(theorem, sizes or {})
    base, expanded, blocks = build_entries(theorem, sz, zero, scale, causal)
    return prove_equal(base, expanded, activation, blocks, refute=refute)


def _describe(zero, scale) -> str:
    z = ",".join(sorted(zero)) or "none"
    s = ",".join(sorted(scale)) or "none"
    return f"zero {{{z}}} scale {{{s}}}"


def sizes_text(theorem: str, sz: dict) -> str:
    g = THEOREMS[theorem].grows
    rest = ",".join(f"{n}={sz[n]}" for n in SIZE_NAMES if n != g)
    return f"{g} {sz[g]}->{sz[g + '_new']} ({rest})"


def run_entries(theorem: str, zero, scale, label: str, activation: str, causal: bool, sizes: dict) -> Level:
    t = time.perf_counter()
    r = entry_claim(theorem, zero, scale, activation, causal, sizes=sizes)
    dt = time.perf_counter() - t
    detail = f"{_describe(zero, scale)}; {sizes_text(theorem, sizes)}"
    if r.status == "proved":
        detail += f"; free blocks: {', '.join(r.free_blocks) or 'none'}; {r.atoms} stand-ins"
    elif r.counterexample:
        detail += "; " + r.counterexample.line()
    else:
        detail += f"; {r.reason or f'{r.residual_terms} output entries did not reduce to 0'}"
    g = THEOREMS[theorem].grows
    return Level(
        theorem,
        "entries",
        r.status,
        dt,
        detail,
        frozenset(zero),
        frozenset(scale),
        r.free_blocks,
        r,
        variant=label,
        sizes=dict(sizes),
        label=f"entries {label} {g}{sizes[g]}->{sizes[g + '_new']}",
    )


def _symbolic_sizes(theorem: str) -> dict:
    g = THEOREMS[theorem].grows
    sz = {"s": "s", "h": "h", "p": "p", "E": 2, "k": "k", "v": "v", "o": "o", "N": THEOREMS[theorem].N}
    sz[g + "_new"] = {"p": "p^", "v": "v^", "k": "k^", "h": "h^", "E": 3, "N": sz["N"] + 1}[g]
    return sz


def run_blocks(theorem: str, zero, scale, entries_status: str | None = None, activation: str = "relu") -> Level:
    """The symbolic-size level: lemmas generated for exactly this constraint set, glued by the checker."""
    t = time.perf_counter()
    chains, problems = prove_chains(theorem, set(zero), set(scale), activation)
    nsteps = sum(len(c.steps) for c in chains)
    if not problems:
        status = "proved"
        detail = (
            f"{_describe(zero, scale)}; {len(chains)} lemmas, {nsteps} rewrite steps, glued and each checked at "
            f"explicit entries; induction over layers checked"
        )
    else:
        status = "refuted" if entries_status == "refuted" else "not proved"
        detail = f"{_describe(zero, scale)}; {problems[0]}" + (
            f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        )
        if status == "refuted":
            detail += "; the entry-level counterexample is an instance of the symbolic sizes"
    return Level(
        theorem,
        "symbolic",
        status,
        time.perf_counter() - t,
        detail,
        frozenset(zero),
        frozenset(scale),
        chains=chains,
        variant=activation,
        sizes=_symbolic_sizes(theorem),
        label="symbolic sizes",
    )


# ---- composition --------------------------------------------------------------------------------


def compose_models(activation_causal: bool = False, wide: bool = False):
    """Base (N=2, h=2, p=2, E=1, k=v=2, s=2, o=2) and the model after all six expansions, paper constraints.

    Every size grows by one (:data:`COMPOSE_SIZES`), or by two with ``wide`` (:data:`COMPOSE_WIDE`).
    """
    sz = COMPOSE_WIDE if wide else COMPOSE_SIZES
    base = base_model(N=2, causal=activation_causal)
    m, _ = X.expand_mlp(base, sz["p_new"], X.PAPER["mlp"][0], (), "s1:")
    m, _ = X.add_heads(m, 2, 2, X.PAPER["add_heads"][0], (), "s2:", count=sz["E_new"] - 1)
    m, _ = X.expand_heads(m, sz["v_new"], X.PAPER["heads"][0], (), "s3:")
    m, _ = X.expand_attention(m, sz["k_new"], X.PAPER["attention"][0], X.PAPER["attention"][1], "s4:")
    m, _ = X.expand_hidden(m, sz["h_new"], X.PAPER["hidden"][0], X.PAPER["hidden"][1], "s5:")
    m, _ = X.add_layer(m, 1, 2, 1, 2, 2, X.PAPER["add_layer"][0], (), "s6:", count=sz["N_new"] - 2)
    return base, m


COMPOSE_SIZES = {
    "s": 2,
    "h": 2,
    "p": 2,
    "E": 1,
    "k": 2,
    "v": 2,
    "o": 2,
    "N": 2,
    "h_new": 3,
    "p_new": 3,
    "E_new": 2,
    "k_new": 3,
    "v_new": 3,
    "N_new": 3,
}
COMPOSE_WIDE = {
    "s": 2,
    "h": 2,
    "p": 2,
    "E": 1,
    "k": 2,
    "v": 2,
    "o": 2,
    "N": 2,
    "h_new": 4,
    "p_new": 4,
    "E_new": 3,
    "k_new": 4,
    "v_new": 4,
    "N_new": 4,
}


def run_compose() -> list[Level]:
    out = []
    t = time.perf_counter()
    chains, problems = prove_compose()
    nsteps = sum(len(c.steps) for c in chains)
    status = "proved" if not problems else "not proved"
    detail = (
        f"six stages on a two-layer model, each stage's base the previous stage's expanded model; "
        f"{len(chains)} lemmas, {nsteps} rewrite steps" + (f"; {problems[0]}" if problems else "")
    )
    out.append(
        Level(
            "compose",
            "symbolic",
            status,
            time.perf_counter() - t,
            detail,
            chains=chains,
            variant="relu",
            sizes={
                "s": "s",
                "h": "h",
                "p": "p",
                "E": 1,
                "k": "k",
                "v": "v",
                "o": "o",
                "N": 2,
                "h_new": "h^",
                "p_new": "p^",
                "E_new": 2,
                "k_new": "k^",
                "v_new": "v^",
                "N_new": 3,
            },
            label="symbolic sizes",
        )
    )
    for label, act, causal, wide in [SETTINGS[0] + (False,), SETTINGS[1] + (False,), SETTINGS[0] + (True,)]:
        t = time.perf_counter()
        sz = COMPOSE_WIDE if wide else COMPOSE_SIZES
        base, m = compose_models(causal, wide)
        r = prove_equal(base, m, act)
        grown = ", ".join(f"{k[:-4]} {sz[k[:-4]]}->{v}" for k, v in sz.items() if k.endswith("_new"))
        detail = f"plan mlp, add_heads, heads, attention (W_K), hidden, add_layer at=1: {grown}"
        if r.status == "proved":
            detail += f"; {r.atoms} stand-ins"
        elif r.counterexample:
            detail += "; " + r.counterexample.line()
        out.append(
            Level(
                "compose",
                "entries",
                r.status,
                time.perf_counter() - t,
                detail,
                result=r,
                variant=label,
                sizes=dict(sz),
                label=f"entries {label}" + (" wide" if wide else ""),
            )
        )
    return out


def run_theorem(theorem: str, zero=None, scale=None, sizes: list[dict] | None = None) -> list[Level]:
    """Every level of one theorem (default: the paper's constraints, both default size assignments)."""
    th = THEOREMS[theorem]
    pz, psc = th.paper
    zero = pz if zero is None else frozenset(zero)
    scale = psc if scale is None else frozenset(scale)
    assignments = sizes or default_sizes(theorem)
    entries = []
    for i, sz in enumerate(assignments):
        settings = SETTINGS if i == 0 else SETTINGS[:2]
        entries += [run_entries(theorem, zero, scale, label, act, causal, sz) for label, act, causal in settings]
    refuted = any(lv.status == "refuted" for lv in entries)
    blocks = run_blocks(theorem, zero, scale, "refuted" if refuted else None)
    return [consistent(blocks, refuted)] + entries


def consistent(blocks: Level, refuted: bool) -> Level:
    """A symbolic-size proof contradicted by an entry-level counterexample is reported refuted.

    Any size assignment is an instance of the symbolic sizes, so both cannot hold; the
    counterexample (numbers, evaluated to 40 digits) wins and the disagreement is shown.
    """
    if blocks.status == "proved" and refuted:
        blocks.status = "refuted"
        blocks.detail = "CONTRADICTED by an entry-level counterexample; " + blocks.detail
    return blocks


def decide(theorem: str, zero=None, scale=None, activation: str = "relu", causal: bool = False) -> dict:
    """Verdicts of one claim: ``{"entries small": ..., "entries wide": ..., "symbolic": ...}``.

    Entry level at both default size assignments, symbolic sizes with the same activation,
    combined as in :func:`run_theorem`.
    """
    th = THEOREMS[theorem]
    zero = th.paper[0] if zero is None else frozenset(zero)
    scale = th.paper[1] if scale is None else frozenset(scale)
    out = {}
    for label, sizes in zip(("entries small", "entries wide"), default_sizes(theorem)):
        out[label] = entry_claim(theorem, zero, scale, activation, causal, sizes=sizes).status
    refuted = "refuted" in out.values()
    out["symbolic"] = consistent(run_blocks(theorem, zero, scale, None, activation), refuted).status
    return out

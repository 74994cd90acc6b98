"""The claims the checker proves: Theorems 3.1-3.6, epsilon, composition; one runner per level.

Each theorem has a small symbolic base model (entry level: ``s = 2``, ``h = 2``, ``p = 2``,
``E = 1``, ``k = 2``, ``v = 2``, ``o = 2``, one layer) and an expansion by one of every
grown size. A claim is (theorem, zero blocks, scalings); the default is the paper's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from . import expand as X
from .chains import CHAIN_SETS, Chain, prove_chains
from .entries import EntryResult, prove_equal
from .symbolic import base_model

ORDER = ["mlp", "add_heads", "heads", "attention", "hidden", "add_layer", "eps", "compose"]
SIX = ORDER[:6]
EPS = sp.Symbol("eps", positive=True)


@dataclass(frozen=True)
class Theorem:
    name: str
    title: str
    sizes: str
    base: dict
    build: Callable  # (base, zero, scale, prefix) -> (model, blocks)

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


THEOREMS = {
    "mlp": Theorem(
        "mlp", "Theorem 3.1 MLP expansion", "p 2->3", {}, lambda b, z, sc, pre="": X.expand_mlp(b, 3, z, sc, pre)
    ),
    "add_heads": Theorem(
        "add_heads",
        "Theorem 3.2 head addition",
        "E 1->2",
        {},
        lambda b, z, sc, pre="": X.add_heads(b, 2, 2, z, sc, pre),
    ),
    "heads": Theorem(
        "heads", "Theorem 3.3 heads expansion", "v 2->3", {}, lambda b, z, sc, pre="": X.expand_heads(b, 3, z, sc, pre)
    ),
    "attention": Theorem(
        "attention",
        "Theorem 3.4 attention expansion",
        "k 2->3",
        {},
        lambda b, z, sc, pre="": X.expand_attention(b, 3, z, sc, pre),
    ),
    "hidden": Theorem(
        "hidden",
        "Theorem 3.5 hidden dimension expansion",
        "h 2->3, N=2",
        {"N": 2},
        lambda b, z, sc, pre="": X.expand_hidden(b, 3, z, sc, pre),
    ),
    "add_layer": Theorem(
        "add_layer",
        "Theorem 3.6 layer addition",
        "N 1->2, new layer first",
        {},
        lambda b, z, sc, pre="": X.add_layer(b, 0, 2, 1, 2, 2, z, sc, pre),
    ),
    "eps": Theorem(
        "eps",
        "RMSNorm epsilon in the hidden expansion",
        "h 2->3, N=2, eps > 0",
        {"eps": EPS, "N": 2},
        lambda b, z, sc, pre="": X.expand_hidden(b, 3, z, sc, pre),
    ),
}

# entry-level settings every theorem is proved under: (label, activation, causal)
SETTINGS = [
    ("entries ReLU", "relu", False),
    ("entries causal GELU", "gelu", True),
    ("entries causal SiLU", "silu", True),
]

# minimal-set searches: theorem -> [(label, scalings, activation)]
SEARCHES = {
    "mlp": [("ReLU", frozenset(), "relu"), ("any activation f", frozenset(), "f")],
    "add_heads": [("", frozenset(), "relu")],
    "heads": [("", frozenset(), "relu")],
    "attention": [
        ("W_K scaled", frozenset({"W_K"}), "relu"),
        ("W_Q scaled", frozenset({"W_Q"}), "relu"),
        ("no scaling", frozenset(), "relu"),
    ],
    "hidden": [("g scaled", frozenset({"g"}), "relu"), ("no scaling", frozenset(), "relu")],
    "eps": [("g and eps scaled", frozenset({"g", "eps"}), "relu"), ("g scaled, eps not", frozenset({"g"}), "relu")],
    "add_layer": [("", frozenset(), "relu")],
}


@dataclass
class Level:
    """One line of output: a theorem at one level."""

    theorem: str
    level: str
    status: str  # proved | refuted | not proved
    seconds: float
    detail: str = ""
    zero: frozenset = frozenset()
    scale: frozenset = frozenset()
    free: list = field(default_factory=list)
    result: EntryResult | None = None
    chains: list[Chain] = field(default_factory=list)


def parse_constraints(theorem: str, zero: str | None, scale: str | None):
    """``--zero`` / ``--scale`` text -> (zero set, scale set), validated against the theorem's names."""
    th = THEOREMS.get(theorem)
    if th is None:
        raise ValueError(f"--zero/--scale: need exactly one of {', '.join(THEOREMS)}, got {theorem!r}")
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
        z = names(zero, list(th.blocks), "--zero")
    if scale is not None:
        sc = names(scale, list(th.scalings), "--scale")
    return z, sc


def entry_claim(theorem: str, zero, scale, activation="relu", causal=False, refute=True) -> EntryResult:
    """Prove (or refute) preservation of one theorem's expansion under one constraint set."""
    th = THEOREMS[theorem]
    base = base_model(causal=causal, **th.base)
    expanded, blocks = th.build(base, set(zero), set(scale))
    return prove_equal(base, expanded, activation, blocks, refute=refute)


def _describe(zero, scale) -> str:
    z = ",".join(sorted(zero)) or "none"
    s = ",".join(sorted(scale)) or "none"
    return f"zero {{{z}}} scale {{{s}}}"


def run_entries(theorem: str, zero, scale, label: str, activation: str, causal: bool) -> Level:
    t = time.perf_counter()
    r = entry_claim(theorem, zero, scale, activation, causal)
    dt = time.perf_counter() - t
    detail = _describe(zero, scale)
    if r.status == "proved":
        detail += f"; free blocks: {', '.join(r.free_blocks) or 'none'}; {r.atoms} atoms"
    elif r.counterexample:
        detail += "; " + r.counterexample.line()
    else:
        detail += f"; {r.residual_terms} output entries did not reduce to 0 and no counterexample was found"
    return Level(theorem, label, r.status, dt, detail, frozenset(zero), frozenset(scale), r.free_blocks, r)


def run_blocks(theorem: str, zero, scale, entries_status: str | None = None) -> Level:
    """The symbolic-size level: the chain whose constraint set is contained in ``zero`` (same scalings)."""
    t = time.perf_counter()
    for variant, cz, csc in CHAIN_SETS[theorem]:
        if cz <= set(zero) and csc == set(scale):
            chains = prove_chains(theorem, variant)
            ok = all(c.ok for c in chains)
            nsteps = sum(len(c.steps) for c in chains)
            extra = set(zero) - cz
            detail = f"{len(chains)} chains, {nsteps} steps each checked symbolically and at explicit sizes"
            if extra:
                detail += f"; chain for {{{','.join(sorted(cz))}}}, so {','.join(sorted(extra))} = 0 is an instance"
            return Level(
                theorem,
                "symbolic sizes",
                "proved" if ok else "not proved",
                time.perf_counter() - t,
                detail,
                frozenset(zero),
                frozenset(scale),
                chains=chains,
            )
    if entries_status == "refuted":
        return Level(
            theorem,
            "symbolic sizes",
            "refuted",
            time.perf_counter() - t,
            "the entry-level counterexample is an instance of the symbolic sizes",
            frozenset(zero),
            frozenset(scale),
        )
    return Level(
        theorem,
        "symbolic sizes",
        "not proved",
        time.perf_counter() - t,
        "no block-level chain for this constraint set",
        frozenset(zero),
        frozenset(scale),
    )


# ---- composition --------------------------------------------------------------------------------
COMPOSE_PLAN = "mlp p=3; add_heads (k=v=2); heads v=3; attention k=3 (W_K); hidden h=3; add_layer at=1"


def compose_models(activation_causal: bool = False):
    """Base (N=2, h=2, p=2, E=1, k=v=2, s=2, o=2) and the model after all six expansions, paper constraints."""
    base = base_model(N=2, causal=activation_causal)
    m, _ = X.expand_mlp(base, 3, X.PAPER["mlp"][0], (), "s1:")
    m, _ = X.add_heads(m, 2, 2, X.PAPER["add_heads"][0], (), "s2:")
    m, _ = X.expand_heads(m, 3, X.PAPER["heads"][0], (), "s3:")
    m, _ = X.expand_attention(m, 3, X.PAPER["attention"][0], X.PAPER["attention"][1], "s4:")
    m, _ = X.expand_hidden(m, 3, X.PAPER["hidden"][0], X.PAPER["hidden"][1], "s5:")
    m, _ = X.add_layer(m, 1, 2, 1, 2, 2, X.PAPER["add_layer"][0], (), "s6:")
    return base, m


def run_compose(levels_six: list[Level]) -> list[Level]:
    out = []
    t = time.perf_counter()
    sym = [lv for lv in levels_six if lv.level == "symbolic sizes"]
    ok = len(sym) == 6 and all(lv.status == "proved" for lv in sym)
    out.append(
        Level(
            "compose",
            "symbolic sizes",
            "proved" if ok else "not proved",
            time.perf_counter() - t,
            "transitivity: each step preserves the function of whatever model it is applied to "
            f"({'all six' if ok else 'not all six'} symbolic-size proofs hold)",
        )
    )
    for label, act, causal in SETTINGS[:2]:
        t = time.perf_counter()
        base, m = compose_models(causal)
        r = prove_equal(base, m, act)
        detail = f"plan {COMPOSE_PLAN} on N=2 -> N=3, h=3, p=3, E=2, k=v=3"
        if r.status == "proved":
            detail += f"; {r.atoms} atoms"
        elif r.counterexample:
            detail += "; " + r.counterexample.line()
        out.append(Level("compose", label, r.status, time.perf_counter() - t, detail, result=r))
    return out


def run_theorem(theorem: str, zero=None, scale=None) -> list[Level]:
    """Every level of one theorem (default: the paper's constraints)."""
    th = THEOREMS[theorem]
    pz, psc = th.paper
    zero = pz if zero is None else frozenset(zero)
    scale = psc if scale is None else frozenset(scale)
    entries = [run_entries(theorem, zero, scale, label, act, causal) for label, act, causal in SETTINGS]
    blocks = run_blocks(theorem, zero, scale, entries[0].status)
    return [blocks] + entries

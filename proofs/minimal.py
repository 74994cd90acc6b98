"""Minimality: drop each constraint in turn; search all minimal sets of zero constraints.

Preservation under a set ``S`` of zero blocks means: equal outputs for every value of the
other new blocks. It is monotone: if ``S`` preserves, so does every superset (zero is one of
the values a free block may take), and a counterexample for ``S`` is one for every subset.
The search uses this:

1. ``necessary`` = blocks ``b`` such that zeroing every other block still fails; every
   preserving set contains them;
2. supersets of ``necessary`` are visited by increasing size, skipping supersets of sets
   already found, so each preserving set found is minimal.

Each candidate is decided as: a float64 screen at random points (relative difference above
``SCREEN_THRESHOLD``, which is 10^5 times float64 rounding of these tiny models: refuted);
otherwise the entry-level symbolic proof (proved), or a 40-digit counterexample (refuted),
or neither ("not proved", listed as undecided).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import combinations

from .entries import SCREEN_THRESHOLD, float_screen, prove_equal
from .theorems import SEARCHES, THEOREMS, Level, build_entries, default_sizes, entry_claim, run_blocks


@dataclass
class Search:
    theorem: str
    label: str
    scale: frozenset
    activation: str
    minimal: list[frozenset] = field(default_factory=list)
    necessary: frozenset = frozenset()
    undecided: list[frozenset] = field(default_factory=list)
    checks: int = 0
    seconds: float = 0.0

    def sets_text(self) -> str:
        if not self.minimal:
            return "none (no set of zero blocks preserves the function)"
        return "; ".join(
            "{" + ", ".join(sorted(m, key=list(THEOREMS[self.theorem].blocks).index)) + "}" for m in self.minimal
        )


def screened(base, expanded, activation: str, blocks) -> str:
    """One candidate's verdict (module doc): ``"refuted"`` by the float64 screen, else the
    entry-level proof's status (``"proved"``, ``"refuted"`` or ``"not proved"``)."""
    if float_screen(base, expanded, activation) > SCREEN_THRESHOLD:
        return "refuted"
    return prove_equal(base, expanded, activation, blocks).status


def minimal_supersets(fixed: frozenset, rest: list, decide, minimal: list, undecided: list) -> None:
    """Visit ``fixed`` plus every subset of ``rest`` by increasing size, skipping supersets of a set
    already in ``minimal``; append each set ``decide`` proves to ``minimal`` (so each is minimal,
    by monotonicity) and each it leaves ``"not proved"`` to ``undecided``."""
    for r in range(len(rest) + 1):
        for combo in combinations(rest, r):
            S = fixed | frozenset(combo)
            if any(m <= S for m in minimal):
                continue
            st = decide(S)
            if st == "proved":
                minimal.append(S)
            elif st == "not proved":
                undecided.append(S)


def _decider(theorem: str, scale, activation: str):
    sizes = default_sizes(theorem)[0]
    memo: dict = {}

    def decide(zero: frozenset) -> str:
        if zero not in memo:
            base, expanded, blocks = build_entries(theorem, sizes, zero, scale)
            memo[zero] = screened(base, expanded, activation, blocks)
        return memo[zero]

    return decide, memo


def search(theorem: str, label: str, scale, activation: str) -> Search:
    """All minimal sets of zero blocks preserving the function (with ``scale`` and ``activation``)."""
    t = time.perf_counter()
    blocks = list(THEOREMS[theorem].blocks)
    decide, memo = _decider(theorem, scale, activation)
    out = Search(theorem, label, frozenset(scale), activation)
    ALL = frozenset(blocks)
    top = decide(ALL)
    if top != "proved":
        if top == "not proved":
            out.undecided.append(ALL)
    else:
        out.necessary = frozenset(b for b in blocks if decide(ALL - {b}) == "refuted")
        rest = [b for b in blocks if b not in out.necessary]
        minimal_supersets(out.necessary, rest, decide, out.minimal, out.undecided)
    out.checks = len(memo)
    out.seconds = time.perf_counter() - t
    return out


def drop_each(theorem: str) -> list[Level]:
    """For each of the paper's constraints: the claim without it, refuted with a counterexample."""
    th = THEOREMS[theorem]
    zero, scale = th.paper
    out = []
    cases = [(f"drop zero {b}", zero - {b}, scale) for b in sorted(zero, key=list(th.blocks).index)]
    cases += [(f"drop scaling {c}", zero, scale - {c}) for c in sorted(scale)]
    for label, z, sc in cases:
        t = time.perf_counter()
        sizes = default_sizes(theorem)[0]
        r = entry_claim(theorem, z, sc, sizes=sizes)
        detail = (
            r.counterexample.line()
            if r.counterexample
            else ("unexpectedly proved" if r.status == "proved" else "no counterexample found")
        )
        # the claim checked here is "the constraint is necessary": it holds when preservation is refuted
        status = "refuted" if r.status == "refuted" else r.status
        out.append(
            Level(
                theorem,
                "entries",
                status,
                time.perf_counter() - t,
                detail,
                frozenset(z),
                frozenset(sc),
                result=r,
                variant=label,
                sizes=dict(sizes),
                label=label,
            )
        )
    return out


def searches(theorem: str) -> list[Search]:
    return [search(theorem, label, sc, act) for label, sc, act in SEARCHES[theorem]]


def sufficient_proofs(found: list[Search], done: list[Level] = ()) -> list[Level]:
    """A symbolic-size proof for every minimal set found with an activation where f(0) = 0.

    Sets proved in ``done`` are not proved again. Supersets need no proof of their own (zero is one value of a free block), but
    ``fpt-ref prove THEOREM --zero ...`` generates one for any set on request.
    """
    out = []
    seen = {(lv.theorem, lv.zero, lv.scale) for lv in done if lv.level == "symbolic" and lv.status == "proved"}
    for s in found:
        if s.activation == "f":
            continue
        for m in s.minimal:
            key = (s.theorem, m, s.scale)
            if key in seen:
                continue
            seen.add(key)
            lv = run_blocks(s.theorem, m, s.scale)
            lv.label = "symbolic sizes, minimal set"
            out.append(lv)
    return out

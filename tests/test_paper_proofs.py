"""The minimal constraint sets of fpt_ref.paper (which the block audit accepts) are exactly the
ones the proof checker's exhaustive search finds: the table is held against the proofs."""

from __future__ import annotations

import pytest
from fpt_ref.proofs.minimal import search

from fpt_ref.paper import EXPANSIONS


def _by_scalings(row):
    out: dict = {}
    for zero, scalings in row.minimal:
        out.setdefault(scalings, set()).add(zero)
    return out


CASES = [(name, sc, zeros) for name, row in EXPANSIONS.items() for sc, zeros in _by_scalings(row).items()]


@pytest.mark.parametrize(
    "name,scalings,zeros", CASES, ids=[f"{c[0]}-{'+'.join(sorted(c[1])) or 'none'}" for c in CASES]
)
def test_paper_minimal_sets_are_the_proved_ones(name, scalings, zeros):
    # the proofs state the hidden expansion with eps > 0 as the theorem "eps" (gains and eps scaled)
    theorem = "eps" if "eps" in scalings else name
    r = search(theorem, "", frozenset(scalings), "relu")
    assert not r.undecided
    assert set(r.minimal) == zeros

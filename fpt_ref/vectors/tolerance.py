"""Former home of the agreement policy of ``fpt-ref compare``: see :mod:`fpt_ref.tolerance`.

Kept as re-exports for code that imports ``fpt_ref.vectors.tolerance``.
"""

from __future__ import annotations

from ..tolerance import (
    C_IN,
    C_LAYER,
    C_OUT,
    DTYPES,
    decidable,
    excess,
    natural_scales,
    path_lengths,
    tolerances,
    top2_gap,
    unit_roundoff,
)

__all__ = [
    "C_IN",
    "C_LAYER",
    "C_OUT",
    "DTYPES",
    "decidable",
    "excess",
    "natural_scales",
    "path_lengths",
    "tolerances",
    "top2_gap",
    "unit_roundoff",
]

"""Former home of the error measures and the preservation tolerance: see :mod:`fpt_ref.tolerance`.

Kept as re-exports for code that imports ``fpt_ref.metrics``.
"""

from __future__ import annotations

from .tolerance import (
    error_stats,
    magnitude_streams,
    natural_scale,
    reduction_length,
    tolerance_abs,
    tolerance_ulps,
)

__all__ = ["error_stats", "magnitude_streams", "natural_scale", "reduction_length", "tolerance_abs", "tolerance_ulps"]

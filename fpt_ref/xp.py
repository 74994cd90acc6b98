"""Array-namespace helpers: one code path for NumPy and CuPy.

CuPy is never imported here; ``cupy.get_array_module`` semantics are reproduced by
looking at the array's type, so a NumPy-only installation never touches CuPy.
"""

from __future__ import annotations

import numpy as np


def array_namespace(*arrays):
    """The array module (``numpy`` or ``cupy``) of the given arrays."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy  # imported only when a CuPy array is actually present

            return cupy
    return np


def to_numpy(a):
    """A NumPy copy/view of a NumPy or CuPy array."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)

"""Argument checks shared by the whole library: one home for "is this an integer / a number".

Errors are ``ValueError`` whose message starts with the Python parameter's name, so a
caller (the CLI, a script) can show it as it is.

>>> check_int("p", np.int64(48), 1)
48
>>> check_int("p", True, 1)
Traceback (most recent call last):
...
ValueError: p: expected an integer, got True
"""

from __future__ import annotations

import math

import numpy as np


def is_int(value) -> bool:
    """True for Python and NumPy integers, never for ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python ``int``; ``ValueError`` naming ``name`` when it is not an
    integer (``bool`` is refused) or lies outside ``[minimum, maximum]``."""
    if not is_int(value):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be at most {maximum}, got {value}")
    return int(value)


def check_float(name: str, value, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite Python ``float``; ``ValueError`` naming ``name`` when it is not a
    real number (``bool`` is refused), not finite, below ``minimum``, or not ``> 0`` when
    ``positive``.

    >>> check_float("eps", np.float32(0.25), minimum=0.0)
    0.25
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    return float(value)


def parse_int(name: str, text: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer written as text (a plan value, a command-line option): ``"48"`` -> 48.

    Only decimal integers are accepted (``"1e9"`` and ``"4.0"`` are refused, naming ``name``).
    """
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    return check_int(name, value, minimum, maximum)

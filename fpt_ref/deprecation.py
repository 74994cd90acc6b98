"""Keyword arguments that were renamed: the old name still works, with a ``DeprecationWarning``.

Counts are named ``n_*`` (``n_layers``, ``n_heads``: how many), selections keep the plain
names (``layers``, ``heads``: which ones). :func:`renamed` lets a function accept an old
name for one release: ``@renamed(heads="n_heads")``.

>>> @renamed(heads="n_heads")
... def f(*, n_heads=1):
...     return n_heads
>>> import warnings
>>> with warnings.catch_warnings(record=True) as w:
...     warnings.simplefilter("always")
...     f(heads=3), str(w[0].message)
(3, "f: 'heads=' is deprecated, use 'n_heads=' (a count)")
"""

from __future__ import annotations

import functools
import warnings

TWICE = "{new}: given twice, as {new}= and as the deprecated {old}="


def rename(kwargs: dict, old_to_new: dict, where: str, stacklevel: int, error=ValueError, twice: str = TWICE) -> dict:
    """``kwargs`` with each deprecated key ``old`` renamed to ``new``, warning for each one used.

    ``where`` starts the warning (``"f"``, ``"plan: step 'add_layer'"``); giving both names
    raises ``error`` with the message ``twice`` (formatted with ``old`` and ``new``); ``stacklevel`` is that of the caller to blame,
    counted from the caller of :func:`rename`.
    """
    out = dict(kwargs)
    for old, new in old_to_new.items():
        if old in out:
            if new in out:
                raise error(twice.format(old=old, new=new))
            warnings.warn(
                f"{where}: '{old}=' is deprecated, use '{new}=' (a count)",
                DeprecationWarning,
                stacklevel=stacklevel + 1,
            )
            out = {(new if k == old else k): v for k, v in out.items()}
    return out


def renamed(**old_to_new):
    """Decorator: accept each old keyword ``old`` as the new ``new``, warning once per call.

    Giving both names is a ``ValueError`` starting with the new name. ``inspect.signature``
    of the decorated function shows only the new names.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            return fn(*args, **rename(kwargs, old_to_new, fn.__name__, stacklevel=2))

        return inner

    return wrap

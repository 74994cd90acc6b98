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


def renamed(**old_to_new):
    """Decorator: accept each old keyword ``old`` as the new ``new``, warning once per call.

    Giving both names is a ``ValueError`` starting with the new name. ``inspect.signature``
    of the decorated function shows only the new names.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ValueError(f"{new}: given twice, as {new}= and as the deprecated {old}=")
                    warnings.warn(
                        f"{fn.__name__}: '{old}=' is deprecated, use '{new}=' (a count)",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return inner

    return wrap

"""Reference vectors and cross-framework checking.

:mod:`fpt_ref.vectors.write` writes the cases (``fpt-ref vectors``), :mod:`fpt_ref.vectors.compare`
checks another implementation's tensors against one (``fpt-ref compare``); the sub-commands
live in :mod:`fpt_ref.vectors.cli`. See docs/vectors.md for the case layout, the manifest,
the tolerance policy and examples.
"""

"""Machine-checked (SymPy) proofs that the six expansions preserve the function.

See ``docs/proofs.md``. Nothing is proved on import; ``fpt-ref prove`` runs the checker.
"""


def summary_line() -> str:
    """One line summarising a quick proof run (entry level, six theorems, paper constraints)."""
    from .report import summary

    return summary()

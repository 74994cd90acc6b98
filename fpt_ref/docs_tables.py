"""Markdown tables generated from the project's facts, for the documentation.

docs/architectures.md holds the tables of :mod:`fpt_ref.blocks` (presets, recipes, wrong
recipes) between marker lines ``<!-- generated: NAME -->`` and ``<!-- end generated -->``;
:func:`render` rewrites them and ``tests/test_docs_tables.py`` checks that the committed
file equals its rendering, so the document cannot drift from :data:`fpt_ref.blocks.RECIPES`.

Regenerate after changing :mod:`fpt_ref.blocks`::

    python -m fpt_ref.docs_tables docs/architectures.md
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields

BEGIN = "<!-- generated: {name} -->"
END = "<!-- end generated -->"
_SECTION = re.compile(r"^<!-- generated: (\w+) -->\n(.*?)^<!-- end generated -->$", re.S | re.M)


def _cell(text) -> str:
    """One table cell: pipes escaped, newlines joined."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def recipes_table() -> str:
    """The table block x expansion -> constraint set (:data:`fpt_ref.blocks.RECIPES`), one row per
    recipe in the order of :data:`fpt_ref.paper.NAMES`, with the claim of ``fpt-ref prove`` that
    proves it and, for a refused combination, the reason."""
    from .blocks import RECIPES
    from .paper import NAMES

    order = {name: i for i, name in enumerate(NAMES)}
    recipes = sorted(RECIPES, key=lambda r: order[r.expansion])  # stable: the table's order within a step
    rows = [
        (
            f"`{r.expansion}`",
            f"`{r.block}`",
            r.constraint,
            f"`{r.proof}`",
            f"**refused**: {r.refused}" if r.refused else "exact",
        )
        for r in recipes
    ]
    return _table(["expansion", "block", "constraint set", "proof (`fpt-ref prove`)", "verdict"], rows)


def wrong_recipes_table() -> str:
    """The tempting recipes that ``fpt-ref prove --all`` refutes (:data:`fpt_ref.blocks.WRONG_RECIPES`)."""
    from .blocks import WRONG_RECIPES

    return _table(["refuted claim", "the wrong recipe"], [(f"`{k}`", v) for k, v in WRONG_RECIPES.items()])


def presets_table() -> str:
    """One row per preset of :data:`fpt_ref.blocks.PRESETS`, one column per :class:`fpt_ref.blocks.Arch` field."""
    from .blocks import PRESETS, Arch

    names = [f.name for f in fields(Arch)]

    def fmt(v):
        return str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)

    rows = [
        [f"`{p}`"] + [fmt(getattr(a, n)) for n in names] + [", ".join(a.names()) or "-"] for p, a in PRESETS.items()
    ]
    return _table(["preset"] + [f"`{n}`" for n in names] + ["block names"], rows)


#: marker name -> the function that renders it
TABLES = {"presets": presets_table, "recipes": recipes_table, "wrong_recipes": wrong_recipes_table}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current rendering.

    Raises ``ValueError`` for a marker naming no table of :data:`TABLES`.
    """

    def sub(m):
        name = m.group(1)
        if name not in TABLES:
            raise ValueError(f"text: unknown generated table {name!r} (tables: {', '.join(TABLES)})")
        return f"{BEGIN.format(name=name)}\n{TABLES[name]()}{END}"

    return _SECTION.sub(sub, text)


def sections(text: str) -> dict:
    """``{name: content}`` of the generated sections of ``text``."""
    return {m.group(1): m.group(2) for m in _SECTION.finditer(text)}


def main(argv=None) -> int:
    """Rewrite the generated tables of each file named in ``argv``; exit status 0."""
    for path in sys.argv[1:] if argv is None else argv:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = render(text)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""docs/architectures.md against fpt_ref.blocks: the generated tables cannot drift from the code."""

from __future__ import annotations

import os

import pytest

from fpt_ref import blocks, docs_tables

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "architectures.md")


def _doc() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_the_committed_tables_equal_their_rendering():
    text = _doc()
    assert set(docs_tables.sections(text)) == set(docs_tables.TABLES)
    assert docs_tables.render(text) == text, "regenerate: python -m fpt_ref.docs_tables docs/architectures.md"


def _rows(table: str) -> list:
    """Body rows of a markdown table as lists of cells (the renderer's own escaping undone)."""
    out = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip().replace("\\|", "|") for c in line.strip()[1:-1].split(" | ")]
        out.append(cells)
    return out


def test_every_recipe_and_wrong_recipe_is_a_row_of_the_document():
    """Parsed from the committed file, not from the renderer: each RECIPES row, its proof and verdict."""
    got = _rows(docs_tables.sections(_doc())["recipes"])
    assert len(got) == len(blocks.RECIPES)
    want = {
        (f"`{r.expansion}`", f"`{r.block}`", " ".join(r.constraint.split()), f"`{r.proof}`"): r.refused
        for r in blocks.RECIPES
    }
    for cells in got:
        key = tuple(cells[:4])
        assert key in want, cells
        assert (cells[4] == "exact") == (not want[key]), cells
    wrong = {tuple(c) for c in _rows(docs_tables.sections(_doc())["wrong_recipes"])}
    assert wrong == {(f"`{k}`", v) for k, v in blocks.WRONG_RECIPES.items()}


def test_the_presets_table_has_one_row_per_preset_with_each_field():
    rows = _rows(docs_tables.sections(_doc())["presets"])
    assert [r[0] for r in rows] == [f"`{p}`" for p in blocks.PRESETS]
    llama = dict(zip(["preset", "norm", "mlp", "act", "mlp_bias", "positions"], rows[1]))
    assert (llama["norm"], llama["mlp"], llama["act"], llama["mlp_bias"], llama["positions"]) == (
        "rms",
        "gated",
        "silu",
        "false",
        "rope",
    )


def test_a_changed_table_is_detected(monkeypatch):
    """Mutation: a recipe whose constraint changes makes the committed document stale."""
    text = _doc()
    changed = list(blocks.RECIPES)
    changed[0] = blocks.Recipe(changed[0].expansion, changed[0].block, "M_l2 = 0 only", changed[0].proof)
    monkeypatch.setattr(blocks, "RECIPES", tuple(changed))
    assert docs_tables.render(text) != text


def test_cells_escape_pipes_and_unknown_markers_are_refused():
    assert docs_tables._table(["a"], [["x | y"]]).splitlines()[2] == "| x \\| y |"
    with pytest.raises(ValueError, match="^text: unknown generated table 'nope'"):
        docs_tables.render("<!-- generated: nope -->\nold\n<!-- end generated -->")


def test_main_rewrites_a_stale_file(tmp_path, capsys):
    path = tmp_path / "doc.md"
    path.write_text("intro\n<!-- generated: wrong_recipes -->\nstale\n<!-- end generated -->\nend\n", encoding="utf-8")
    assert docs_tables.main([str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert "stale" not in text and "`mlp/glu:none`" in text and text.endswith("<!-- end generated -->\nend\n")
    assert "rewrote" in capsys.readouterr().out
    assert docs_tables.main([str(path)]) == 0 and capsys.readouterr().out == ""  # already current

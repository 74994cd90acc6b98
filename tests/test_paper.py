"""The paper's table (fpt_ref.paper) against what the reader sees: the README's two tables
(the six expansions; plan steps and keys) and the signatures and docstrings of the code.

The README is parsed, not trusted: a row, a section, a function, a grown size, a constrained
block, a scaling or a plan key that drifts from fpt_ref.paper fails here, naming the cell.
"""

from __future__ import annotations

import inspect
import os
import re

import pytest

import fpt_ref
from fpt_ref import expansions, paper
from fpt_ref.names import KINDS

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")


def _table(header: str) -> list:
    """The body rows (lists of stripped cells) of the README table whose header row starts ``header``."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"README.md: expected one table whose header starts {header!r}, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2 :]:  # skip the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _ticked(text: str) -> list:
    """The `code` spans of a cell, in order."""
    return re.findall(r"`([^`]*)`", text)


def _first_choice(cell: str) -> str:
    """The cell without its ``(or ...)`` alternative (the attention mirror, ``scale="W_Q"``)."""
    return cell.split("(or", 1)[0]


EXPANSION_ROWS = _table("| paper | function |")
KEY_ROWS = _table("| step | keys |")


def test_readme_tables_have_one_row_per_expansion_in_the_papers_order():
    sections = [r[0] for r in EXPANSION_ROWS]
    assert sections == [row.section for row in paper.EXPANSIONS.values()], (
        f"README.md expansion table: sections {sections}, fpt_ref.paper: "
        f"{[row.section for row in paper.EXPANSIONS.values()]}"
    )
    steps = [_ticked(r[0])[0] for r in KEY_ROWS]
    assert steps == list(paper.NAMES), f"README.md plan-keys table: steps {steps}, fpt_ref.paper: {paper.NAMES}"


def _readme_row(name: str) -> list:
    row = paper.EXPANSIONS[name]
    rows = [r for r in EXPANSION_ROWS if r[0] == row.section]
    assert len(rows) == 1, f"README.md expansion table: {len(rows)} rows for section {row.section} ({name}), expected 1"
    cells = rows[0]
    assert len(cells) == 5, f"README.md expansion table, row {row.section}: expected 5 cells, got {cells}"
    return cells


@pytest.mark.parametrize("name", paper.NAMES)
def test_readme_function_and_its_arguments(name):
    row = paper.EXPANSIONS[name]
    cell = _ticked(_readme_row(name)[1])[0]
    m = re.fullmatch(r"(\w+)\((.*)\)", cell)
    assert m, f"README.md row {row.section}: {cell!r} is not a call signature"
    assert m[1] == row.function, f"README.md row {row.section}: function {m[1]}, fpt_ref.paper: {row.function}"
    params = [p.strip() for p in m[2].split(",")]
    assert params[0] == "model", f"README.md row {row.section}: first argument {params[0]!r}"
    keys = [p.split("=")[0] for p in params[1:]]
    required = tuple(p for p in params[1:] if "=" not in p)
    assert keys == list(row.keys), f"README.md row {row.section}: arguments {keys}, plan keys {list(row.keys)}"
    assert required == row.required, f"README.md row {row.section}: required {required}, fpt_ref.paper {row.required}"


@pytest.mark.parametrize("name", paper.NAMES)
def test_readme_grows(name):
    row = paper.EXPANSIONS[name]
    cell = _ticked(_readme_row(name)[2])
    grows = tuple(c.split("->")[0].strip() for c in cell)
    assert grows == row.grows, f"README.md row {row.section}: grows {grows}, fpt_ref.paper: {row.grows}"


_SYMBOL_KIND = {s.split(",")[0]: k for k, s in paper.SYMBOLS.items()}  # "W_O" -> "w_o"


def _zero_blocks_named(row: paper.Expansion, token: str) -> set:
    """The constrained blocks a README token names: a block by its paper name (``M_l2``,
    ``M_O,e``), or every constrained block lying in a tensor named by file name or symbol."""
    name = token.split("=")[0].strip().split(",")[0]
    if name in row.blocks:
        return {name}
    kind = name if name in KINDS else _SYMBOL_KIND.get(name)
    assert kind is not None, f"README.md row {row.section}: {token!r} is neither a block of {row.name} nor a tensor"
    found = {z for z in row.zero if kind in row.tensors[z]}
    assert found, f"README.md row {row.section}: {token!r} names no constrained block of {row.name}"
    return found


@pytest.mark.parametrize("name", paper.NAMES)
def test_readme_constrained_blocks(name):
    row = paper.EXPANSIONS[name]
    tokens = _ticked(_first_choice(_readme_row(name)[3]))
    named = set().union(*(_zero_blocks_named(row, t) for t in tokens))
    assert named == set(row.zero), (
        f"README.md row {row.section}: constrained blocks {sorted(named)}, fpt_ref.paper: {sorted(row.zero)}"
    )


@pytest.mark.parametrize("name", paper.NAMES)
def test_readme_scalings(name):
    row = paper.EXPANSIONS[name]
    cell = _readme_row(name)[4]
    if not row.paper_scalings:
        assert cell == "-", f"README.md row {row.section}: scaled {cell!r}, fpt_ref.paper: none"
        return
    idents = [t for t in _ticked(_first_choice(cell)) if re.fullmatch(r"[A-Za-z_][\w,]*", t)]
    named = {s for s in row.scalings if any(t.split(",")[0] == s or t.endswith("_" + s) for t in idents)}
    assert named == set(row.paper_scalings), (
        f"README.md row {row.section}: scaled {sorted(named)}, fpt_ref.paper: {sorted(row.paper_scalings)}"
    )
    for s in row.paper_scalings:
        factor = row.scalings[s].split("multiplied by ")[-1]
        assert f"`{factor}`" in cell, f"README.md row {row.section}: scaling {s} by {factor} is not in {cell!r}"


@pytest.mark.parametrize("name", paper.NAMES)
def test_readme_plan_keys(name):
    row = paper.EXPANSIONS[name]
    rows = [r for r in KEY_ROWS if _ticked(r[0])[0] == name]
    assert len(rows) == 1, f"README.md plan-keys table: {len(rows)} rows for step {name}, expected 1"
    cells = rows[0]
    keys_cell = re.sub(r"\((?!required\))[^)]*\)", "", cells[1])  # drop "(`W_K` or `W_Q`)"-like notes
    found = re.findall(r"`(\w+)`( \(required\))?", keys_cell)
    keys = [k for k, _ in found]
    required = tuple(k for k, req in found if req)
    assert keys == list(row.keys), f"README.md plan keys of {name}: {keys}, fpt_ref.paper: {list(row.keys)}"
    assert required == row.required, f"README.md required keys of {name}: {required}, fpt_ref.paper: {row.required}"


def test_readme_scale_choices_are_the_attention_scalings():
    (cells,) = [r for r in KEY_ROWS if _ticked(r[0])[0] == "attention"]
    choices = set(_ticked(re.search(r"`scale` \(([^)]*)\)", cells[1])[1]))
    assert choices == set(paper.EXPANSIONS["attention"].scalings)


# ---- the table against the code ----------------------------------------------------------

_NOT_KEYS = {"model", "init", "seed", "return_manifest"}


@pytest.mark.parametrize("name", paper.NAMES)
def test_functions_take_the_plan_keys(name):
    """Each expansion's arguments are its plan keys; those without default are the required ones."""
    row = paper.EXPANSIONS[name]
    fn = getattr(expansions, row.function)
    assert getattr(fpt_ref, row.function) is fn
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in _NOT_KEYS]
    assert [p.name for p in params] == list(row.keys), name
    assert tuple(p.name for p in params if p.default is inspect.Parameter.empty) == row.required, name


@pytest.mark.parametrize("name", paper.NAMES)
def test_docstrings_cite_the_papers_section(name):
    row = paper.EXPANSIONS[name]
    fn = getattr(expansions, row.function)
    assert f"Theorem {row.section}" in inspect.getmodule(fn).__doc__, name
    assert f"section {row.section}" in fn.__doc__, name


# The paper's constraints written out by hand from docs/spec.md section 2 (Theorems 3.1-3.6):
# expansion -> (blocks constrained to zero, free blocks, the scalings the paper applies).
PAPER_BLOCKS = {
    "mlp": ({"M_l2"}, {"M_l1", "m_b_l1"}, set()),
    "add_heads": ({"M_O"}, {"W_Q_new", "W_K_new", "W_V_new"}, set()),
    "heads": ({"M_O"}, {"M_V"}, set()),
    "attention": ({"M_K"}, {"M_Q"}, {"W_K"}),
    "hidden": ({"M_I", "M_P", "M_O", "M_l2", "m_b_l2"}, {"M_l1", "M_Q", "M_K", "M_V", "M_out", "m_g"}, {"eps", "g"}),
    "add_layer": ({"W_O", "W_l2", "b_l2"}, {"W_Q", "W_K", "W_V", "W_l1", "b_l1", "g_MHA", "g_MLP"}, set()),
}

# Where the blocks lie (file-format tensor kinds, fpt_ref.names), by hand: the gain block of the
# hidden expansion lies in both gain vectors; every other block in one tensor.
BLOCK_TENSORS = {
    "M_l1": "w_l1", "m_b_l1": "b_l1", "M_l2": "w_l2", "m_b_l2": "b_l2", "M_O": "w_o", "M_V": "w_v",
    "M_Q": "w_q", "M_K": "w_k", "M_I": "embed", "M_P": "pos", "M_out": "w_out",
    "W_Q_new": "w_q", "W_K_new": "w_k", "W_V_new": "w_v",
    "W_Q": "w_q", "W_K": "w_k", "W_V": "w_v", "W_O": "w_o", "W_l1": "w_l1", "b_l1": "b_l1", "W_l2": "w_l2",
    "b_l2": "b_l2", "g_MHA": "norm_mha", "g_MLP": "norm_mlp",
}  # fmt: skip


@pytest.mark.parametrize("name", paper.NAMES)
def test_table_has_the_papers_blocks(name):
    row = paper.EXPANSIONS[name]
    zero, free, scalings = PAPER_BLOCKS[name]
    assert (set(row.zero), set(row.free), set(row.paper_scalings)) == (zero, free, scalings)
    expected = {b: ("norm_mha", "norm_mlp") if b == "m_g" else (BLOCK_TENSORS[b],) for b in zero | free}
    # the paper's tensors of each paper block (the final norm is a real-architecture block, spec 4)
    assert {b: tuple(t for t in row.tensors[b] if t != "final_norm") for b in row.blocks} == expected
    assert set(row.tensors) == set(row.blocks) | set(row.arch_blocks)
    assert not set(row.blocks) & set(row.arch_blocks)


def test_table_is_consistent():
    assert set(paper.SYMBOLS) == set(KINDS)  # every file-format tensor has its paper symbol
    assert tuple(PAPER_BLOCKS) == paper.NAMES
    assert [row.section for row in paper.EXPANSIONS.values()] == ["3.1", "3.2", "3.3", "3.4", "3.5", "3.6"]
    with pytest.raises(ValueError, match="^name: unknown expansion 'grow'; choose from mlp, add_heads"):
        paper.expansion("grow")

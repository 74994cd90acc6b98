"""The real-architecture claims (docs/spec.md section 4) against ``fpt_ref.blocks``, and their mutations.

The table :data:`fpt_ref.blocks.RECIPES` and :data:`fpt_ref.blocks.WRONG_RECIPES` is held against
the records of ``fpt-ref prove --all --json``, read from the one run that tests/test_proofs_cli.py
makes per session (no second full run). The mutations run in-process: each exact recipe with
one constraint dropped (or one block of the model changed) must come out refuted, with numbers.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import sympy as sp
from fpt_ref.proofs import core as C
from fpt_ref.proofs import variants as V
from fpt_ref.proofs.entries import prove_equal
from test_proofs_cli import full_run, prove

from fpt_ref.blocks import RECIPES, WRONG_RECIPES


@pytest.fixture(scope="module")
def records():
    rc, out, err, _, _ = full_run()
    assert rc == 0, err
    return json.loads(out)


def _claims(recs, name):
    return [r for r in recs if r["theorem"] == name and "minimal" not in r]


@pytest.mark.parametrize("row", RECIPES, ids=lambda r: r.proof)
def test_every_recipe_has_its_claim(records, row):
    mine = _claims(records, row.proof)
    assert mine, f"no record named {row.proof}"
    levels = {r["level"] for r in mine}
    assert "entries" in levels and levels <= {"entries", "symbolic"}
    assert ("symbolic" in levels) == (row.proof in V.SYMBOLIC)
    for r in mine:
        if row.refused:
            assert r["verdict"] == "refuted", r
            assert "counterexample" in r["detail"] and "refused" in r["detail"]
        else:
            assert r["verdict"] == "proved", r
            assert ("free blocks" if r["level"] == "entries" else "induction over layers checked") in r["detail"]


@pytest.mark.parametrize("name", sorted(WRONG_RECIPES))
def test_every_wrong_recipe_is_refuted_with_numbers(records, name):
    mine = _claims(records, name)
    assert len(mine) == 1
    r = mine[0]
    assert r["verdict"] == "refuted" and "counterexample" in r["detail"] and "|difference|" in r["detail"]
    assert WRONG_RECIPES[name] in r["detail"]


def test_subvariants_are_proved_and_only_wrong_ones_refuted(records):
    names = {r["theorem"] for r in records if "/" in r["theorem"]}
    refused = {row.proof for row in RECIPES if row.refused}
    for name in names:
        verdicts = {r["verdict"] for r in _claims(records, name)}
        want = "refuted" if name in WRONG_RECIPES or name in refused else "proved"
        assert verdicts == {want}, name


def test_block_names_in_the_records(records):
    text = " ".join(r["theorem"] + " " + r["variant"] for r in records)
    for block in ("glu", "rope", "gqa", "layernorm", "final_norm", "tied", "bias"):
        assert block in text, block
    presets = {r["theorem"] for r in records if r["theorem"].startswith("preset/")}
    for p in ("llama", "qwen2", "gpt2"):
        assert {f"preset/{p}:{e}" for e in ("mlp", "add_heads", "heads", "attention", "hidden", "add_layer")} <= presets


def test_gpt2_hidden_growth_is_proved_on_the_gpt2_blocks(records):
    (r,) = _claims(records, "hidden/layernorm")
    assert r["verdict"] == "proved"
    for block in ("layernorm", "gelu_tanh", "bias", "final_norm", "tied"):
        assert block in r["variant"]
    assert r["sizes"]["h_new"] - r["sizes"]["h"] >= 2 and r["sizes"]["N"] == 2


@pytest.mark.parametrize(
    "name,sets",
    [
        ("mlp/glu", [["M_l2"], ["M_l1", "m_b_l1"], ["M_gate", "m_b_gate"]]),
        ("heads/bias", [["M_O"], ["M_V", "m_b_v"]]),
        ("attention/bias", [["M_Q", "m_b_q"], ["M_K", "m_b_k"]]),
    ],
)
def test_minimal_sets(records, name, sets):
    (r,) = [r for r in records if r["theorem"] == name and "minimal" in r]
    assert r["verdict"] == "proved"
    assert sorted(map(sorted, r["minimal"])) == sorted(map(sorted, sets))


def test_a_row_alone_through_the_command_line():
    rc, out, err = prove("mlp/glu", "--minimal")
    assert rc == 0, out + err
    assert re.search(r"^mlp/glu:gate\s+entries glu, silu p2->3\s+proved", out, re.M)
    assert re.search(r"^mlp/glu\s+minimal sets .* \{M_l2\}; \{M_l1, m_b_l1\}; \{M_gate, m_b_gate\}", out, re.M)
    assert re.search(r"^mlp/glu:none\s+.*refuted .*counterexample", out, re.M)
    rc, out, err = prove("attention/rope:keep_theta", "--json")
    assert rc == 0, err  # refuted, as a wrong recipe must be: the claim "it is not exact" holds
    assert [r["verdict"] for r in json.loads(out)] == ["refuted"]


# ---- mutations: one constraint dropped, in-process --------------------------------------------------
def _run(name, **changes):
    return V.run_claim(dataclasses.replace(V.BY_NAME[name], **changes))


def _without(name, block):
    c = V.BY_NAME[name]
    assert block in c.zero
    return _run(name, zero=c.zero - {block})


def _unscaled(name, scaling):
    c = V.BY_NAME[name]
    assert scaling in c.scale
    return _run(name, scale=c.scale - {scaling})


MUTATIONS = [
    ("gated MLP, no zero set", lambda: _run("mlp/glu", zero=frozenset())),
    ("gated MLP, up set without the bias entries", lambda: _without("mlp/glu:up", "m_b_l1")),
    ("gated MLP, gate set without the bias entries", lambda: _without("mlp/glu:gate", "m_b_gate")),
    ("RoPE, theta kept (half)", lambda: _unscaled("attention/rope", "theta")),
    ("RoPE, theta kept (interleaved)", lambda: _unscaled("attention/rope:interleaved", "theta")),
    ("RoPE, W_K unscaled", lambda: _unscaled("attention/rope", "W_K")),
    ("RoPE, columns appended (half)", lambda: _run("attention/rope", options={"rope_mode": "append"})),
    ("RoPE, M_K free", lambda: _without("attention/rope", "M_K")),
    ("bias + RoPE, b_k unscaled", lambda: _unscaled("attention/bias:rope", "b_k")),
    ("bias + RoPE, new b_k entries free", lambda: _without("attention/bias:rope", "m_b_k")),
    (
        "LayerNorm untied, zero padding",
        lambda: _run("hidden/layernorm:untied", options={"pad": "zero"}, zero=V.HIDDEN_ZERO | {"m_beta", "M_out"}),
    ),
    ("LayerNorm, new bias entries free", lambda: _without("hidden/layernorm", "m_beta")),
    ("LayerNorm, gains unscaled", lambda: _unscaled("hidden/layernorm", "g")),
    ("LayerNorm, eps unscaled", lambda: _unscaled("hidden/layernorm", "eps")),
    ("LayerNorm untied, no final norm, M_out free", lambda: _without("hidden/layernorm:untied", "M_out")),
    ("final norm, gains unscaled", lambda: _unscaled("hidden/final_norm", "g")),
    ("final norm, eps unscaled", lambda: _unscaled("hidden/final_norm", "eps")),
    ("tied, new embedding columns free", lambda: _without("hidden/tied", "M_I")),
    ("bias, new b_o entries free", lambda: _without("hidden/bias", "m_b_o")),
    ("gated, new W_l2 columns free", lambda: _without("hidden/glu", "M_l2")),
    ("grouped-query head addition, M_O free", lambda: _without("add_heads/gqa", "M_O")),
    ("grouped-query head addition, appended", lambda: _run("add_heads/gqa", options={"mode": "append"})),
    ("grouped-query heads expansion, M_O free", lambda: _without("heads/gqa", "M_O")),
    ("grouped-query attention expansion, W_K unscaled", lambda: _unscaled("attention/gqa", "W_K")),
    ("new head with biases, M_O free", lambda: _without("add_heads/bias", "M_O")),
    ("new layer, b_o free", lambda: _without("add_layer/bias", "b_o")),
    ("new gated layer, W_l2 free", lambda: _without("add_layer/glu", "W_l2")),
    ("new LayerNorm layer, b_l2 free", lambda: _without("add_layer/layernorm", "b_l2")),
    ("gpt2 preset, hidden by zero padding", lambda: _run("preset/gpt2:hidden", options={"pad": "zero"})),
    ("llama preset, attention with theta kept", lambda: _unscaled("preset/llama:attention", "W_K")),
]


@pytest.mark.parametrize("label,run", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_dropped_constraint_is_refuted(label, run):
    lv = run()
    assert lv.status == "refuted", (label, lv.detail)
    assert "counterexample" in lv.detail


SYMBOLIC_MUTATIONS = [
    ("gated MLP, no zero set", "mlp/glu", {"zero": frozenset()}),
    ("grouped-query head addition, appended", "add_heads/gqa", {"options": {"mode": "append"}}),
    ("grouped-query attention expansion, W_K unscaled", "attention/gqa", {"scale": frozenset()}),
    ("tied, new embedding columns free", "hidden/tied", {"zero": V.BY_NAME["hidden/tied"].zero - {"M_I"}}),
    ("final norm, eps unscaled", "hidden/final_norm", {"scale": frozenset({"g"})}),
]


@pytest.mark.parametrize("label,name,changes", SYMBOLIC_MUTATIONS, ids=[m[0] for m in SYMBOLIC_MUTATIONS])
def test_a_dropped_constraint_is_not_proved_at_symbolic_sizes(label, name, changes):
    c = dataclasses.replace(V.BY_NAME[name], **changes)
    assert V.run_symbolic(c).status == "not proved"


@pytest.mark.parametrize("name", ["mlp/glu:gate", "add_heads/gqa"])
def test_the_unmutated_claims_are_proved_at_symbolic_sizes(name):
    assert V.run_symbolic(V.BY_NAME[name]).status == "proved"


@pytest.mark.parametrize(
    "name",
    ["mlp/glu", "attention/rope", "attention/rope:interleaved", "hidden/layernorm", "add_heads/gqa", "heads/gqa"],
)
def test_the_unmutated_claims_are_proved(name):
    assert V.run_claim(V.BY_NAME[name]).status == "proved"


def test_angles_identified_by_kind_only_cannot_prove_keep_theta(monkeypatch):
    """A kernel that gives every angle the same cos/sin stand-in makes theta vanish from the symbolic
    difference; the numbers (true cos and sin) still refute the claim."""
    base, expanded, blocks = V.build(V.BY_NAME["attention/rope:keep_theta"])
    monkeypatch.setattr(C.Kernel, "cos", lambda self, a: self._atom("cos", sp.Integer(1), "cos"))
    monkeypatch.setattr(C.Kernel, "sin", lambda self, a: self._atom("sin", sp.Integer(1), "sin"))
    assert prove_equal(base, expanded, "relu", blocks).status == "refuted"


def test_a_constant_key_column_without_rope_is_not_proved_and_not_refuted():
    """Without RoPE, new key entries equal to a constant bias add the same number to every logit of
    a row, which the softmax ignores: the function is preserved, but the kernel has no
    shift-invariance rule, so the verdict is "not proved" (never "proved", never refuted)."""
    lv = _without("attention/bias", "m_b_k")
    assert lv.status == "not proved" and "counterexample" not in lv.detail
    assert _unscaled("attention/bias", "b_k").status == "not proved"


def test_an_unchecked_mean_rule_cannot_prove_zero_padding(monkeypatch):
    """``let_row`` writing every later entry as the mean of the preceding ones *without* checking it
    turns LayerNorm's zero padding into mean padding inside the kernel, so the symbolic difference
    reduces to 0; the numbers (which never use the rule) still refute the claim."""

    def unchecked(self, row):
        out = []
        for j, e in enumerate(row):
            out.append(self.canon(sum(out, sp.Integer(0)) / j) if j >= 2 else self.let(e))
        return out

    monkeypatch.setattr(C.Kernel, "let_row", unchecked)
    c = V.BY_NAME["hidden/layernorm:zero_pad"]
    base, expanded, blocks = V.build(c)
    r = prove_equal(base, expanded, c.activation, blocks)
    assert r.status == "refuted" and "reduced to 0 but numbers differ" in r.reason


def test_kv_must_divide_the_heads():
    from fpt_ref.proofs.blocks import arch_model

    from fpt_ref.blocks import Arch

    with pytest.raises(ValueError, match="^kv: must divide"):
        arch_model(Arch(), E=3, kv=2)

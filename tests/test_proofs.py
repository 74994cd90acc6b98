"""The SymPy proof checker (issue 3): kernel, chains, refutations, minimality, summary."""

from __future__ import annotations

import pytest
import sympy as sp
from sympy.matrices.expressions import BlockMatrix, MatrixSymbol, ZeroMatrix

from proofs import summary_line
from proofs.chains import SIZES, Chain, Step, check_chain, explicit_equal, prove_chains, symbolic_equal
from proofs.entries import DIFF_THRESHOLD, SCREEN_THRESHOLD, float_screen, numpy_forward, prove_equal
from proofs.minimal import drop_each, search
from proofs.symbolic import Kernel, base_model, forward
from proofs.theorems import SIX, THEOREMS, entry_claim, parse_constraints

h, p, s = sp.symbols("h p s", integer=True, positive=True)


# ---- entry level --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SIX + ["eps"])
def test_paper_constraints_proved_at_entry_level(name):
    zero, scale = THEOREMS[name].paper
    r = entry_claim(name, zero, scale)
    assert r.status == "proved", r
    # the free blocks really are free symbols of the expanded model, and the constrained ones are not
    assert r.free_blocks and not set(r.free_blocks) & set(zero)


@pytest.mark.parametrize("name", SIX + ["eps"])
def test_dropping_each_constraint_is_refuted_by_numbers(name):
    th = THEOREMS[name]
    drops = drop_each(name)
    zero, scale = th.paper
    assert len(drops) == len(zero) + len(scale)
    for d in drops:
        assert d.status == "refuted", (d.level, d.detail)
        cx = d.result.counterexample
        assert cx.max_abs_diff > DIFF_THRESHOLD
        # independent float64 evaluation at the same values shows the same difference
        base = base_model(**th.base)
        expanded, _ = th.build(base, set(d.zero), set(d.scale))
        vals = {sym: cx.values[sym.name] for sym in _symbols(base) | _symbols(expanded)}
        y0, y1 = numpy_forward(base, vals), numpy_forward(expanded, vals)
        i, j = cx.entry
        assert abs((y1[i, j] - y0[i, j]) - float(cx.expanded - cx.original)) <= 1e-9 * max(1.0, abs(y0).max())


def _symbols(m):
    from proofs.symbolic import model_symbols

    return model_symbols(m)


def test_eps_without_rescaling_gives_an_error_of_the_order_of_eps():
    zero, scale = THEOREMS["eps"].paper
    r = entry_claim("eps", zero, scale - {"eps"})
    assert r.status == "refuted"
    d = r.counterexample.max_abs_diff  # eps = 1e-6, as in the authors' notebook
    assert sp.Float("1e-9") < d < sp.Float("1e-3")


def test_a_true_identity_the_kernel_cannot_see_is_not_proved_never_proved():
    base = base_model()
    x = base.w_out[0, 0]
    disguised = base.replace(w_out=base.w_out.copy())
    disguised.w_out[0, 0] = (x**2 - 1) / (x - 1)  # equals x + 1 ...
    honest = base.replace(w_out=base.w_out.copy())
    honest.w_out[0, 0] = x + 1
    r = prove_equal(honest, disguised)
    assert r.status == "not proved" and r.residual_terms > 0  # ... but expand does not cancel it, and
    # no numeric point separates them, so it is neither proved nor refuted


def test_a_deliberately_wrong_claim_is_refuted():
    # the paper's hidden expansion without the sqrt(h/h^) gain scaling
    zero, _ = THEOREMS["hidden"].paper
    assert entry_claim("hidden", zero, set()).status == "refuted"
    # attention expansion scaling the wrong amount: no scaling at all, but both new blocks zero
    assert entry_claim("attention", {"M_Q", "M_K"}, set()).status == "refuted"


def test_atoms_evaluate_to_the_numeric_forward_pass():
    # the proof's atom expressions and a plain numeric forward agree at random numbers
    th = THEOREMS["hidden"]
    base = base_model(**th.base)
    expanded, _ = th.build(base, *map(set, th.paper))
    K = Kernel("relu")
    y = forward(expanded, K)
    from proofs.entries import evaluate, random_values

    vals = random_values(_symbols(expanded), seed=3)
    a = K.numeric_matrix(y, vals)
    b = evaluate(expanded, vals)
    assert max(abs(u - v) for u, v in zip(a, b)) < sp.Float("1e-30")


def test_generic_activation_needs_f0_for_the_alternative_mlp_constraints():
    assert entry_claim("mlp", {"M_l2"}, set(), activation="f").status == "proved"
    r = entry_claim("mlp", {"M_l1", "m_b_l1"}, set(), activation="f")
    assert r.status == "refuted" and "softplus" in r.counterexample.line()
    for act in ("relu", "gelu", "silu"):
        assert entry_claim("mlp", {"M_l1", "m_b_l1"}, set(), activation=act, causal=True).status == "proved"


# ---- minimal sets -----------------------------------------------------------------------------------
def test_minimal_sets_mlp():
    relu = search("mlp", "ReLU", frozenset(), "relu")
    assert set(relu.minimal) == {frozenset({"M_l2"}), frozenset({"M_l1", "m_b_l1"})} and not relu.undecided
    any_f = search("mlp", "f", frozenset(), "f")
    assert any_f.minimal == [frozenset({"M_l2"})] and not any_f.undecided


def test_minimal_sets_attention():
    wk = search("attention", "", frozenset({"W_K"}), "relu")
    wq = search("attention", "", frozenset({"W_Q"}), "relu")
    assert frozenset({"M_K"}) in wk.minimal and frozenset({"M_Q"}) in wq.minimal
    # zeroing either new block kills the cross term, whichever projection carries the scaling
    assert set(wk.minimal) == set(wq.minimal) == {frozenset({"M_K"}), frozenset({"M_Q"})}
    assert search("attention", "", frozenset(), "relu").minimal == []


def test_minimal_sets_hidden_is_the_papers_set():
    r = search("hidden", "", frozenset({"g"}), "relu")
    assert r.minimal == [frozenset(THEOREMS["hidden"].paper[0])] and not r.undecided


def test_minimal_sets_add_layer_include_the_papers_set_and_nothing_undecided():
    r = search("add_layer", "", frozenset(), "relu")
    assert frozenset({"W_O", "W_l2", "b_l2"}) in r.minimal and not r.undecided
    assert all("b_l2" in m for m in r.minimal)  # b_l2 is added directly to the stream
    # every minimal set is minimal: removing any block breaks preservation (float64 difference
    # far above rounding, evaluated independently of the search's memo)
    th = THEOREMS["add_layer"]
    base = base_model(**th.base)
    for m in r.minimal:
        for b in m:
            expanded, _ = th.build(base, set(m - {b}), set())
            assert float_screen(base, expanded) > SCREEN_THRESHOLD


# ---- block level --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,variant", [(n, "paper") for n in SIX + ["eps"]] + [("mlp", "alt"), ("attention", "alt")])
def test_every_chain_step_checked(name, variant):
    chains = prove_chains(name, variant)
    assert chains and all(st.ok for c in chains for st in c.steps)


def test_chain_checker_rejects_wrong_steps():
    A, B = MatrixSymbol("A", s, h), MatrixSymbol("B", s, p - 1 + h)
    C, D = MatrixSymbol("C", h, h), MatrixSymbol("D", p - 1 + h, h)
    start = BlockMatrix([[A, B]]) * BlockMatrix([[C], [D]])
    good = check_chain(
        Chain("t", start, [Step(A * C + B * D, "block product"), Step(A * C, "D = 0", {D: ZeroMatrix(p - 1 + h, h)})])
    )
    assert good.ok
    bad = check_chain(Chain("t", start, [Step(A * C, "forgot the second block")]))
    assert not bad.ok
    wrong_order = check_chain(Chain("t", start, [Step(C * A + D * B, "wrong order")]))
    assert not wrong_order.ok
    # the explicit check on its own catches it too, at every size assignment
    assert not any(explicit_equal(start, A * C, sz) for sz in SIZES)
    assert not symbolic_equal(start, A * C)


def test_scalar_step_checked_and_refuted():
    k, kh = sp.symbols("k khat", positive=True)
    ok = check_chain(Chain("t", sp.sqrt(kh / k) / sp.sqrt(kh), [Step(1 / sp.sqrt(k), "")]))
    assert ok.ok
    bad = check_chain(Chain("t", sp.sqrt(kh / k) / sp.sqrt(kh), [Step(1 / sp.sqrt(kh), "")]))
    assert not bad.ok


# ---- user constraint sets, names ---------------------------------------------------------------
def test_parse_constraints():
    assert parse_constraints("mlp", "M_l1,m_b_l1", None) == (frozenset({"M_l1", "m_b_l1"}), frozenset())
    assert parse_constraints("attention", "none", "W_Q") == (frozenset(), frozenset({"W_Q"}))
    with pytest.raises(ValueError, match="M_x"):
        parse_constraints("mlp", "M_x", None)
    with pytest.raises(ValueError, match="--scale"):
        parse_constraints("attention", None, "W_V")


def test_summary_line():
    line = summary_line()
    assert "\n" not in line and "6/6 theorems proved" in line


def test_chain_steps_may_only_assume_what_the_constraint_set_grants(monkeypatch):
    """A chain that zeroes a block its variant does not constrain is not proved."""
    from proofs import chains

    assert all(c.ok for c in chains.prove_chains("mlp", "paper"))
    monkeypatch.setitem(chains.CHAIN_SETS, "mlp", [("paper", set(), set()), ("alt", {"M_l1", "m_b_l1"}, set())])
    bad = chains.prove_chains("mlp", "paper")
    assert not all(c.ok for c in bad)
    assert any("does not grant" in st.detail for c in bad for st in c.steps)

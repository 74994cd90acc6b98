"""The SymPy proof checker: trusted core, entry level at two sizes, generated symbolic-size proofs, minimality."""

from __future__ import annotations

import pytest
import sympy as sp
from fpt_ref.proofs import core as C
from fpt_ref.proofs import summary_line
from fpt_ref.proofs.chains import SIZE_SETS, prove_chains
from fpt_ref.proofs.entries import DIFF_THRESHOLD, SCREEN_THRESHOLD, float_screen, numpy_forward, prove_equal
from fpt_ref.proofs.expand import BLOCKS, PAPER, SCALINGS, expand_hidden
from fpt_ref.proofs.minimal import drop_each, search
from fpt_ref.proofs.symbolic import Kernel, base_model, forward, model_symbols
from fpt_ref.proofs.theorems import (
    SIX,
    THEOREMS,
    build_entries,
    check_sizes,
    default_sizes,
    entry_claim,
    parse_constraints,
)

h, p, s = sp.symbols("h p s", integer=True, positive=True)


# ---- the table comes from fpt_ref.paper ------------------------------------------------------------
def test_blocks_and_constraints_are_read_from_the_paper_table():
    from fpt_ref.paper import EXPANSIONS

    for name in SIX:
        row = EXPANSIONS[name]
        assert list(BLOCKS[name]) == list(row.blocks)
        assert PAPER[name][0] == set(row.zero)
    assert set(SCALINGS["eps"]) == set(EXPANSIONS["hidden"].scalings)
    assert PAPER["eps"][1] == set(EXPANSIONS["hidden"].paper_scalings)
    assert PAPER["hidden"][1] == set(EXPANSIONS["hidden"].paper_scalings) - {"eps"}  # eps = 0 there


# ---- sizes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SIX + ["eps"])
def test_two_default_size_assignments_one_wide(name):
    small, wide = default_sizes(name)
    g = THEOREMS[name].grows
    assert small != wide
    assert wide[g + "_new"] - wide[g] >= 2
    assert all(wide[n] >= 2 for n in ("s", "h", "p", "k", "v", "o"))


def test_check_sizes():
    assert check_sizes("hidden", {"h": 3, "h_new": 6})["h_new"] == 6
    assert check_sizes("mlp", {"h_new": 5})["p_new"] == 3  # another theorem's growth is ignored
    with pytest.raises(ValueError, match="^sizes: unknown size 'x'"):
        check_sizes("mlp", {"x": 2})
    with pytest.raises(ValueError, match="^sizes: p_new must exceed p"):
        check_sizes("mlp", {"p": 3, "p_new": 3})
    with pytest.raises(ValueError, match="^sizes: h must be an integer"):
        check_sizes("mlp", {"h": 0})


# ---- entry level --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SIX + ["eps"])
def test_paper_constraints_proved_at_entry_level_at_both_sizes(name):
    zero, scale = THEOREMS[name].paper
    for sizes in default_sizes(name):
        r = entry_claim(name, zero, scale, sizes=sizes)
        assert r.status == "proved", (sizes, r)
        # the free blocks really are free symbols of the expanded model, and the constrained ones are not
        assert r.free_blocks and not set(r.free_blocks) & set(zero)


@pytest.mark.parametrize("name", SIX + ["eps"])
def test_dropping_each_constraint_is_refuted_by_numbers(name):
    drops = drop_each(name)
    zero, scale = THEOREMS[name].paper
    assert len(drops) == len(zero) + len(scale)
    for d in drops:
        assert d.status == "refuted", (d.level, d.detail)
        cx = d.result.counterexample
        assert cx.max_abs_diff > DIFF_THRESHOLD
        # independent float64 evaluation at the same values shows the same difference
        base, expanded, _ = build_entries(name, d.sizes, d.zero, d.scale)
        vals = {sym: cx.values[sym.name] for sym in model_symbols(base) | model_symbols(expanded)}
        y0, y1 = numpy_forward(base, vals), numpy_forward(expanded, vals)
        i, j = cx.entry
        assert abs((y1[i, j] - y0[i, j]) - float(cx.expanded - cx.original)) <= 1e-9 * max(1.0, abs(y0).max())


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
    zero, _ = THEOREMS["hidden"].paper
    assert entry_claim("hidden", zero, set()).status == "refuted"
    assert entry_claim("attention", {"M_Q", "M_K"}, set()).status == "refuted"


def test_atoms_evaluate_to_the_numeric_forward_pass():
    base, expanded, _ = build_entries("hidden", default_sizes("hidden")[1], *THEOREMS["hidden"].paper)
    K = Kernel("relu")
    y = forward(expanded, K)
    from fpt_ref.proofs.entries import evaluate, random_values

    vals = random_values(model_symbols(expanded), seed=3)
    a = K.numeric_matrix(y, vals)
    b = evaluate(expanded, vals)
    assert max(abs(u - v) for u, v in zip(a, b)) < sp.Float("1e-30")


def test_generic_activation_needs_f0_for_the_alternative_mlp_constraints():
    assert entry_claim("mlp", {"M_l2"}, set(), activation="f").status == "proved"
    r = entry_claim("mlp", {"M_l1", "m_b_l1"}, set(), activation="f")
    assert r.status == "refuted" and "softplus" in r.counterexample.line()
    for act in ("relu", "gelu", "silu"):
        assert entry_claim("mlp", {"M_l1", "m_b_l1"}, set(), activation=act, causal=True).status == "proved"


# ---- trusted core: stand-ins, shapes, fresh symbols ---------------------------------------------------
def test_stand_ins_are_fresh_and_keyed_by_the_exact_argument():
    K = Kernel("relu")
    x = sp.Symbol("x", real=True)
    a, b = K.exp(x), K.exp(x + 0)
    assert a is b and isinstance(a, C.StandIn)
    assert K.exp(2 * x) != a
    assert a != sp.Symbol(a.name, real=True)  # cannot collide with a model symbol of the same name
    assert C.StandIn("exp0") != C.StandIn("exp0")  # nor with another stand-in


def test_norm_instances_have_distinct_new_gains_even_with_one_layer_and_one_head():
    base = base_model(N=1)
    expanded, blocks = expand_hidden(base, 3, PAPER["hidden"][0], {"g"})
    g_mha, g_mlp = blocks["m_g"]
    assert not (g_mha.free_symbols & g_mlp.free_symbols)
    assert prove_equal(base, expanded, "relu", blocks).status == "proved"


def test_shape_equality_is_part_of_equality():
    base = base_model()
    no_out = base.replace(w_out=sp.zeros(base.h, 0))
    r = prove_equal(base, no_out)
    assert r.status == "refuted" and "shapes differ" in r.reason
    assert prove_equal(no_out, no_out).status == "not proved"  # nothing compared is nothing proved


def test_terms_check_shapes():
    A, B = C.Sym("A", s, h), C.Sym("B", p, h)
    with pytest.raises(C.KernelError):
        C.Add((A, B))
    with pytest.raises(C.KernelError):
        C.Mul(sp.Integer(1), (A, A))
    with pytest.raises(C.KernelError):
        C.Cat(((A,), (C.Sym("D", s, p),)))


def test_chain_checker_rejects_false_steps_bad_glue_and_a_wrong_end():
    A, B = C.Sym("A", s, h), C.Sym("B", s, p)
    Cm, D = C.Sym("C", h, h), C.Sym("D", p, h)
    start = C.Mul(sp.Integer(1), (C.Cat(((A, B),)), C.Cat(((Cm,), (D,)))))
    good = C.Add((C.Mul(sp.Integer(1), (A, Cm)), C.Mul(sp.Integer(1), (B, D))))
    sizes = [{s: 2, h: 2, p: 3}]
    assert C.check_chain(C.Chain("t", start, good, [C.Step(start, good, "block product")]), sizes).ok
    wrong = C.Mul(sp.Integer(1), (A, Cm))
    bad = C.check_chain(C.Chain("t", start, wrong, [C.Step(start, wrong, "forgot a block")]), sizes)
    assert not bad.ok and "sides differ" in bad.detail
    unglued = C.check_chain(C.Chain("t", start, good, [C.Step(good, good, "")]), sizes)
    assert not unglued.ok and "not the previous right side" in unglued.detail
    short = C.check_chain(C.Chain("t", start, wrong, [C.Step(start, good, "block product")]), sizes)
    assert not short.ok and "claimed end" in short.detail


def test_norm_lemma_scalar_identity_is_checked():
    assert C.norm_lemma_holds()


# ---- symbolic sizes: generated chains for every sufficient set ---------------------------------------
@pytest.mark.parametrize("name", SIX + ["eps"])
def test_paper_sets_proved_at_symbolic_sizes(name):
    chains, problems = prove_chains(name, *THEOREMS[name].paper)
    assert not problems and chains and all(c.ok and all(st.ok for st in c.steps) for c in chains)


@pytest.mark.parametrize(
    "name,zero,scale",
    [
        ("attention", {"M_Q"}, {"W_K"}),
        ("attention", {"M_K"}, {"W_Q"}),
        ("add_heads", {"W_V_new"}, set()),
        ("heads", {"M_V"}, set()),
        ("add_layer", {"W_V", "W_l1", "b_l1", "b_l2"}, set()),
        ("add_layer", {"g_MHA", "g_MLP", "b_l1", "b_l2"}, set()),
        ("mlp", {"M_l1", "m_b_l1"}, set()),
        ("mlp", {"M_l1", "m_b_l1", "M_l2"}, set()),  # a superset
        ("hidden", PAPER["hidden"][0] | {"M_Q", "m_g"}, {"g"}),  # a superset
    ],
)
def test_other_sufficient_sets_get_generated_proofs(name, zero, scale):
    _, problems = prove_chains(name, zero, scale)
    assert not problems, problems


@pytest.mark.parametrize(
    "name,zero,scale",
    [
        ("attention", {"M_K"}, set()),
        ("attention", set(), {"W_K"}),
        ("mlp", set(), set()),
        ("hidden", PAPER["hidden"][0], set()),
        ("eps", PAPER["hidden"][0], {"g"}),
        ("add_layer", {"W_O", "W_l2"}, set()),
    ],
)
def test_insufficient_sets_are_not_proved_at_symbolic_sizes(name, zero, scale):
    _, problems = prove_chains(name, zero, scale)
    assert problems


def test_generic_activation_keeps_the_mlp_alternative_unproved():
    assert prove_chains("mlp", {"M_l1", "m_b_l1"}, set(), activation="f")[1]
    assert not prove_chains("mlp", {"M_l2"}, set(), activation="f")[1]


def test_composition_is_glued_and_proved():
    """``prove_compose`` (through ``run_compose``) in the session's one ``prove --all`` run
    (tests/proofs_job.py): proved, with more than 20 machine-glued lemmas."""
    import re

    from conftest import prove_all_result

    md = prove_all_result()[4]
    (row,) = [line for line in open(md).read().splitlines() if line.startswith("| compose | symbolic sizes | ")]
    lemmas = re.search(r"; (\d+) lemmas, \d+ rewrite steps", row)
    assert "| proved |" in row and lemmas and int(lemmas.group(1)) > 20, row


def test_explicit_step_checks_use_sizes_of_at_least_two():
    first = SIZE_SETS[0]
    assert all(v >= 2 for v in first.values())


# ---- minimal sets -----------------------------------------------------------------------------------
def test_minimal_sets_mlp():
    relu = search("mlp", "ReLU", frozenset(), "relu")
    assert set(relu.minimal) == {frozenset({"M_l2"}), frozenset({"M_l1", "m_b_l1"})} and not relu.undecided
    any_f = search("mlp", "f", frozenset(), "f")
    assert any_f.minimal == [frozenset({"M_l2"})] and not any_f.undecided


def test_minimal_sets_attention():
    wk = search("attention", "", frozenset({"W_K"}), "relu")
    wq = search("attention", "", frozenset({"W_Q"}), "relu")
    assert set(wk.minimal) == set(wq.minimal) == {frozenset({"M_K"}), frozenset({"M_Q"})}
    assert search("attention", "", frozenset(), "relu").minimal == []


def test_minimal_sets_hidden_is_the_papers_set():
    r = search("hidden", "", frozenset({"g"}), "relu")
    assert r.minimal == [frozenset(THEOREMS["hidden"].paper[0])] and not r.undecided


def test_minimal_sets_add_layer_include_the_papers_set_and_nothing_undecided():
    r = search("add_layer", "", frozenset(), "relu")
    assert frozenset({"W_O", "W_l2", "b_l2"}) in r.minimal and not r.undecided
    assert all("b_l2" in m for m in r.minimal)  # b_l2 is added directly to the stream
    sizes = default_sizes("add_layer")[0]
    for m in r.minimal:
        for b in m:
            base, expanded, _ = build_entries("add_layer", sizes, m - {b}, set())
            assert float_screen(base, expanded) > SCREEN_THRESHOLD


# ---- user constraint sets, names ---------------------------------------------------------------
def test_parse_constraints():
    assert parse_constraints("mlp", "M_l1,m_b_l1", None) == (frozenset({"M_l1", "m_b_l1"}), frozenset())
    assert parse_constraints("attention", "none", "W_Q") == (frozenset(), frozenset({"W_Q"}))
    with pytest.raises(ValueError, match="^zero: .*M_x"):
        parse_constraints("mlp", "M_x", None)
    with pytest.raises(ValueError, match="^scale: "):
        parse_constraints("attention", None, "W_V")


def test_summary_line():
    line = summary_line()
    assert "\n" not in line and "6/6 theorems proved" in line


@pytest.mark.parametrize("name", ["mlp", "heads", "attention"])
def test_every_set_the_entry_level_finds_sufficient_is_proved_at_symbolic_sizes(name):
    """All constraint sets of small theorems: entry-level sufficiency and symbolic proofs agree."""
    from itertools import chain, combinations

    from fpt_ref.proofs.minimal import _decider
    from fpt_ref.proofs.theorems import run_blocks

    th = THEOREMS[name]
    blocks, scalings = list(th.blocks), list(th.scalings)
    sufficient = insufficient = 0
    for sc in chain.from_iterable(combinations(scalings, r) for r in range(len(scalings) + 1)):
        decide, _ = _decider(name, frozenset(sc), "relu")
        for z in chain.from_iterable(combinations(blocks, r) for r in range(len(blocks) + 1)):
            verdict = run_blocks(name, frozenset(z), set(sc)).status
            if decide(frozenset(z)) == "proved":
                sufficient += 1
                assert verdict == "proved", (z, sc)
            else:
                insufficient += 1
                assert verdict == "not proved", (z, sc)
    assert sufficient and insufficient

"""The symbolic models compute fpt_ref's function.

Each symbolic model is evaluated at random float64 values, through the very atom
expressions the proofs reduce (40 digits), and compared with ``fpt_ref.forward`` on a
``fpt_ref.Model`` built from the same numbers. The symbolic value is exact to far below
float64 resolution, so the difference is fpt_ref's rounding alone, which
``fpt_ref.tolerance`` bounds by ``reduction_length(model, s)`` ulps of the output scale; one
more ulp covers rounding the exact value to float64.

The symbolic expansions are also compared, tensor by tensor, with fpt_ref's expansion
functions: the new blocks' values are read from fpt_ref's expanded model at the same
positions, and every other entry (copied, zero, scaled) must then agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from fpt_ref.proofs import expand as X
from fpt_ref.proofs.crosscheck import compare_forward, crosscheck_theorem, tensor_mismatches, to_fpt, values_from_fpt
from fpt_ref.proofs.entries import positive_fix, random_values
from fpt_ref.proofs.symbolic import Kernel, base_model, forward, model_symbols
from fpt_ref.proofs.theorems import THEOREMS, build_entries, compose_models, default_sizes

from fpt_ref.expansions import add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp
from fpt_ref.forward import forward as fpt_forward
from fpt_ref.tolerance import error_stats, reduction_length


def _compare(m, values):
    return compare_forward(m, values)


@pytest.mark.parametrize("name", list(THEOREMS))
@pytest.mark.parametrize("causal", [False, True])
def test_symbolic_models_match_fpt_forward(name, causal):
    base, expanded, _ = build_entries(name, default_sizes(name)[1], *THEOREMS[name].paper, causal=causal)
    for m in (base, expanded):
        syms = model_symbols(m)
        vals = random_values(syms, seed=11, fixed=positive_fix(syms))
        ulp, tol = _compare(m, vals)
        assert ulp <= tol, (name, ulp, tol)


def test_composed_model_matches_fpt_forward():
    base, m = compose_models()
    ulp, tol = _compare(m, random_values(model_symbols(m), seed=5))
    assert ulp <= tol


@pytest.mark.parametrize("name", ["mlp", "hidden"])
def test_prove_runs_the_crosscheck_as_a_claim(name):
    lv = crosscheck_theorem(name, default_sizes(name)[1])
    assert lv.status == "proved" and lv.level == "crosscheck" and "ulp" in lv.detail


def test_tolerance_is_tight_enough_to_catch_a_wrong_model():
    base = base_model()
    vals = random_values(model_symbols(base), seed=2)
    K = Kernel("relu")
    y = K.numeric_matrix(forward(base, K), vals)
    exact = np.array([[float(y[i, j]) for j in range(y.cols)] for i in range(y.rows)])
    model, inp = to_fpt(base, vals)
    wrong = model.replace(norm_eps=1e-12)  # a change far below any sensible float tolerance
    st = error_stats(exact, fpt_forward(wrong, inp))
    assert st["max_ulp"] > reduction_length(model, base.s) + 1


FPT = {  # theorem -> (fpt_ref expansion, symbolic builder), same sizes and layout
    "mlp": (lambda m: expand_mlp(m, 3), lambda b: X.expand_mlp(b, 3)),
    "add_heads": (lambda m: add_heads(m, 1, k=2, v=2), lambda b: X.add_heads(b, 2, 2)),
    "heads": (lambda m: expand_heads(m, 3), lambda b: X.expand_heads(b, 3)),
    "attention W_K": (
        lambda m: expand_attention(m, 3, scale="W_K"),
        lambda b: X.expand_attention(b, 3, {"M_K"}, {"W_K"}),
    ),
    "attention W_Q": (
        lambda m: expand_attention(m, 3, scale="W_Q"),
        lambda b: X.expand_attention(b, 3, {"M_Q"}, {"W_Q"}),
    ),
    "hidden": (lambda m: expand_hidden(m, 3), lambda b: X.expand_hidden(b, 3)),
    "eps": (lambda m: expand_hidden(m, 3), lambda b: X.expand_hidden(b, 3, scale={"g", "eps"})),
    "add_layer": (lambda m: add_layer(m, 0, p=2, n_heads=1, k=2, v=2), lambda b: X.add_layer(b, 0, 2, 1, 2, 2)),
}


@pytest.mark.parametrize("case", list(FPT))
def test_symbolic_expansions_match_fpt_expansions(case):
    fpt_expand, sym_expand = FPT[case]
    base = base_model(N=2, eps=sp.Symbol("eps", positive=True) if case == "eps" else 0)
    vals = random_values(model_symbols(base), seed=7)
    if case == "eps":
        vals[sp.Symbol("eps", positive=True)] = 1e-6
    model, inp = to_fpt(base, vals)
    fpt_expanded = fpt_expand(model)
    sym_expanded, _ = sym_expand(base)
    all_vals = values_from_fpt(sym_expanded, fpt_expanded, vals)
    assert set(all_vals) >= model_symbols(sym_expanded)
    # copied and zero entries exact; scaled ones to a few ulps
    assert tensor_mismatches(sym_expanded, fpt_expanded, all_vals, rel=4 * np.finfo(np.float64).eps) == []
    if case == "hidden" or case == "eps":
        inp = np.concatenate([inp, np.zeros((inp.shape[0], 1))], axis=1)  # M_I = 0: zero-padded input
    ulp, tol = _compare(sym_expanded, all_vals)
    assert ulp <= tol
    st = error_stats(fpt_forward(model, inp[:, : model.h]), fpt_forward(fpt_expanded, inp))
    assert st["max_ulp"] <= 2 * tol


def _variant_claims():
    """One proved real-architecture claim per (architecture, expansion): every block and recipe."""
    from fpt_ref.proofs.variants import _claims, _preset_claims

    seen, out = set(), []
    for c in _claims() + _preset_claims():
        if c.expect == "proved" and (c.arch, c.theorem) not in seen:
            seen.add((c.arch, c.theorem))
            out.append(c)
    return out


@pytest.mark.parametrize("claim", _variant_claims(), ids=lambda c: c.name)
def test_real_architecture_symbolic_models_match_fpt_forward(claim):
    """The symbolic models of the real-architecture claims (docs/spec.md section 4) compute
    fpt_ref's forward pass: the expanded model (which holds every block of its base), at random
    numbers, within the derived bound. This ties what `prove` proves to what fpt_ref computes,
    block by block."""
    from fpt_ref.proofs.crosscheck import compare_forward_arch
    from fpt_ref.proofs.entries import rope_symbols
    from fpt_ref.proofs.variants import build

    _, m, _ = build(claim)
    syms = model_symbols(m) | rope_symbols(m)
    values = random_values(syms, 7, positive_fix(syms))
    err, tol = compare_forward_arch(m, values, claim.arch)
    assert err <= tol, (claim.name, err, tol)

"""Property tests: random heterogeneous models and random compositions of 1-8 expansions
preserve the function within the derived tolerance of fpt_ref.tolerance (the bound is taken on
the natural output scale ``S = max M_{N+1} @ |W_out|``, M the running magnitudes; see docs/tolerance.md, "Tolerance").
The "ci" hypothesis profile runs 600 + 400 + 200 = 1,200 generated cases.
"""

from __future__ import annotations

import numpy as np
from conftest import examples, record_preservation
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import naive_forward
from strategies import build_model, draw_step, model_specs

import fpt_ref
from fpt_ref.tolerance import preservation_scale, tolerance_abs, ulp


def _inputs(model, rng, h_pad=None):
    s = int(rng.integers(1, model.s_max + 1))
    b = int(rng.integers(1, 3))
    if model.embed is not None:
        return rng.integers(0, model.vocab, size=(b, s)), None
    x = rng.normal(size=(b, s, model.h)).astype(model.dtype)
    return x, np.pad(x, [(0, 0), (0, 0), (0, h_pad - model.h)])


def _error(base, x, ref, out, model):
    """(error in ulps of the output scale, fraction of the derived tolerance used).

    The error is measured here; the bound is the documented formula ``tolerance_ulps * ulp(S)``
    (``fpt_ref.tolerance.tolerance_abs``) with ``S = max M_{N+1} @ |W_out|``
    (``fpt_ref.tolerance.preservation_scale``, whose running magnitudes ``M`` are tested on
    their own in test_forward.py). The bound is
    a loose worst case: in float64 it still catches any violation above ~1e-11 relative; the
    float32 runs check that float32 compositions stay within it, with far less power.
    """
    ref, out = np.asarray(ref), np.asarray(out)
    assert ref.shape == out.shape and ref.dtype == out.dtype
    assert np.all(np.isfinite(out))
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
    tol = tolerance_abs(base, model, x.shape[1], preservation_scale(base, fpt_ref.trace(base, x)))
    return diff / ulp(np.max(np.abs(ref)), ref.dtype), diff / tol


def _check_composition(data, dtype):
    spec = data.draw(model_specs(dtype=dtype), label="model")
    base = build_model(spec)
    n_steps = data.draw(st.integers(1, 8), label="n_steps")
    model = base
    for i in range(n_steps):
        op, kw = draw_step(data, model)
        init = data.draw(st.sampled_from(["normal", "normal", "zeros"]), label="init")
        model = fpt_ref.apply_step(model, fpt_ref.Step(op, kw), init=init, seed=i)
    rng = np.random.default_rng(spec["seed"])
    x, x_pad = _inputs(base, rng, model.h)
    ref = fpt_ref.forward(base, x)
    out = fpt_ref.forward(model, x if x_pad is None else x_pad)
    ulp, frac = _error(base, x, ref, out, model)
    record_preservation(f"composition {dtype}", ulp, frac)
    assert frac <= 1, f"preservation error {ulp:.1f} ulp is {frac:.2f} times the derived tolerance"


@settings(max_examples=examples(600))
@given(st.data())
def test_random_compositions_preserve_float64(data):
    _check_composition(data, "float64")


@settings(max_examples=examples(400))
@given(st.data())
def test_random_compositions_preserve_float32(data):
    _check_composition(data, "float32")


@settings(max_examples=examples(200))
@given(model_specs(dtype="float64"), st.integers(0, 2**32 - 1))
def test_forward_matches_naive_implementation(spec, seed):
    model = build_model(spec)
    x, _ = _inputs(model, np.random.default_rng(seed), model.h)
    ulp, frac = _error(model, x, naive_forward(model, x), fpt_ref.forward(model, x), model)
    record_preservation("forward vs naive float64", ulp, frac)
    assert frac <= 1

"""The transformers reference of the forward benchmark (:mod:`benchmarks.hf`): the SAME weights, its timing.

The HF model built from an fpt-ref model (through fpt_ref.hf's export, whose mapping
tests/test_hf_load.py and tests/test_hf_export.py hold against transformers) must hold the same
weights: its logits against ``fpt_ref.forward`` on the benchmark's own models (real inputs as
``inputs_embeds``) within the bounds derived in tests/test_forward_arch.py:
as shipped, the float32 bound (transformers rounds the norm, the softmax and the RoPE angles
to float32 even in a float64 model; measured about 1.6e-7 relative to the largest logit),
and with those steps in float64, a few ulps of the natural output scale. Broken mappings
(gate and up swapped, query heads in the wrong key/value groups, eps dropped) miss them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fpt_ref.benchmarks import hf, ops, report, runner
from naive import naive_scale
from test_benchmarks_arch import TINY
from test_forward_arch import EXTRA_LAYER, tol_ulps
from test_hf_load import float64_islands

import fpt_ref
from fpt_ref import Head
from fpt_ref.tolerance import path_lengths, ulp, unit_roundoff

pytest.importorskip("torch")
pytest.importorskip("transformers")

KV = ("w_k", "w_v", "b_k", "b_v")


def _bound64(m, x, s: int) -> float:
    """The float64 bound of tests/test_forward_arch.py: ``tol_ulps`` ulps of the natural output scale."""
    return tol_ulps(m, s) * ulp(naive_scale(m, x), np.float64)


def _bound32(m, x, s: int) -> float:
    """The float32 agreement bound ``L (u32 + u_dtype) S`` (+ ``2 s`` per layer: RoPE angles), as docs/hf.md."""
    L = path_lengths(m, s)["output"] + m.N * (EXTRA_LAYER + 2 * s) + m.h + 6
    return L * (unit_roundoff(np.float32) + unit_roundoff(m.dtype)) * naive_scale(m, x)


def _logits(model, x):
    return hf.transformers_forward_fn(model, x)().detach().numpy()


def _swap_gate_up(m):
    return m.replace(layers=tuple(dataclasses.replace(L, w_gate=L.w_l1, w_l1=L.w_gate) for L in m.layers))


def _regroup(m):
    """Query heads moved to other groups (head ``j`` reads key/value head ``j mod G``): a wrong grouping."""
    layers = []
    for L in m.layers:
        G, r = L.G, L.group_size
        order = [e for g in range(G) for e in range(g, L.E, G)]  # the heads j with j mod G = g, in group g
        heads = [L.heads[j] for j in order]
        heads = [
            Head(w_q=hd.w_q, w_o=hd.w_o, b_q=hd.b_q, **{k: getattr(L.heads[(i // r) * r], k) for k in KV})
            for i, hd in enumerate(heads)
        ]
        layers.append(dataclasses.replace(L, heads=tuple(heads)))
    return m.replace(layers=tuple(layers))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_benchmark_models_agree_with_transformers(arch):
    size = TINY.for_arch(arch)
    m = ops.build_model(size, "float64")
    x = ops.build_inputs(m, size)
    ours = fpt_ref.forward(m, x)
    b32 = _bound32(m, x, size.s)
    assert np.max(np.abs(ours - _logits(m, x))) <= b32
    for wrong in (_swap_gate_up(m), _regroup(m)):
        assert np.max(np.abs(ours - _logits(wrong, x))) > b32
    m32 = ops.build_model(size, "float32")
    x32 = ops.build_inputs(m32, size)
    out32 = fpt_ref.forward(m32, x32).astype(np.float64)
    assert np.max(np.abs(out32 - _logits(m32, x32))) <= _bound32(m32, x32, size.s)


def test_benchmark_models_in_float64_throughout_agree_to_a_few_ulps(monkeypatch):
    float64_islands(monkeypatch, "llama")  # transformers' float32 steps (norm, softmax, RoPE) in float64
    size = TINY.for_arch("llama")
    m = ops.build_model(size, "float64")
    x = ops.build_inputs(m, size)
    ours = fpt_ref.forward(m, x)
    bound = _bound64(m, x, size.s)
    assert np.max(np.abs(ours - _logits(m, x))) <= bound
    assert np.max(np.abs(ours - _logits(m.replace(norm_eps=0.0), x))) > 1e3 * bound


def test_models_transformers_cannot_express_are_refused():
    m = ops.build_model(TINY.for_arch("llama"), "float64")
    for wrong, msg in (
        (ops.build_model(TINY, "float64"), "^model: transformers reference only for the llama, qwen2 presets"),
        (m.replace(arch=m.arch.replace(rope_layout="interleaved")), "^model: transformers reference only"),
        (m.replace(causal=False), "^model: the transformers causal LMs always apply the causal mask"),
    ):
        with pytest.raises(ValueError, match=msg):
            hf.hf_model(wrong)
    assert hf.check_mappable(m.replace(arch=m.arch.replace(rope_theta=500.0))) == "llama"


def test_runner_times_transformers_in_the_same_rounds():
    cfg = runner.Config.quick(
        arch="llama",
        sizes=["xxs"],
        ops=("forward",),
        backends=("numpy", "torch", "transformers"),
        dtypes=("float64",),
        min_repeats=1,
        max_repeats=1,
        settle_s=0.0,
    )
    res = runner.run(cfg, log_stream=None)
    fwd = {(r["backend"], r["thread_setting"]): r for r in res["records"] if r["op"] == "forward"}
    assert {r["arch"] for r in res["records"]} == {"llama"} and res["machine"]["transformers"]
    for (backend, st), r in fwd.items():
        if backend == "numpy":
            theirs = fwd[("transformers-cpu", st)]
            assert r["ratio_transformers"] == pytest.approx(r["seconds"] / theirs["seconds"], rel=1e-12)
            assert r["ratio_torch"] is not None
        if backend == "transformers-cpu":
            assert 0 < r["transformers_max_rel"] < 1e-6 and r["ratio_matmul"] > 0
    table = report.markdown_table(res)
    assert "Architecture: `llama` (xxs: E=2, G=1, p=64" in table and "ratio_transformers" in table
    paper = runner.run(
        runner.Config.quick(
            sizes=["xxs"],
            ops=("forward",),
            backends=("numpy", "transformers"),
            dtypes=("float64",),
            min_repeats=1,
            max_repeats=1,
        ),
        log_stream=None,
    )
    assert "transformers: skipped, no transformers model for the paper architecture" in paper["notes"]
    assert not any(r["backend"].startswith("transformers") for r in paper["records"])

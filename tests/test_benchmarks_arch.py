"""The benchmark ladder on real architectures (``--arch``): sizes, FLOPs and the PyTorch reference.

The transformers reference is tested in ``tests/test_benchmarks_hf.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from fpt_ref.benchmarks import ops, runner
from test_benchmarks import _Counting, _CountingNamespace

import fpt_ref
from fpt_ref.model import convert, param_count

#: a tiny size whose llama form has two key/value groups of four query heads
TINY = ops.Size("t", h=16, N=2, E=8, k=4, v=4, p=24, o=10, s=6, b=2)


# ---- sizes and work counts ---------------------------------------------------------------
@pytest.mark.parametrize("arch", ops.ARCHS)
@pytest.mark.parametrize("size", ops.QUICK + ops.CPU[:2], ids=lambda s: s.name)
def test_size_formulas_match_the_built_model(arch, size):
    size = size.for_arch(arch)
    m = ops.build_model(size, "float32")
    assert m.arch == fpt_ref.blocks.PRESETS[arch]
    assert size.params() == param_count(m)
    assert size.forward_flops() == ops.forward_flops(m, size.b, size.s)
    assert [L.G for L in m.layers] == [size.kv] * size.N and [L.p for L in m.layers] == [size.p] * size.N


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_forward_flops_count_the_matmuls_of_every_architecture(arch):
    size = TINY.for_arch(arch)
    m = ops.build_model(size, "float64")
    x = ops.build_inputs(m, size)
    mc = convert(m, _CountingNamespace)
    _Counting.flops = 0
    fpt_ref.forward(mc, x)
    assert _Counting.flops == ops.forward_flops(m, size.b, size.s) > 0


def test_llama_rule_at_the_largest_cpu_size():
    paper = ops.CPU[-1]
    llama = paper.for_arch("llama")
    assert (llama.E, llama.kv, llama.p, llama.h) == (16, 4, 2752, 1024)  # G = E/4; 2 * 4096 / 3 -> 2752
    assert ops.gated_width(4096) == 2752 and ops.gated_width(1024) == 704 and ops.gated_width(96) == 64
    # the gated MLP's FLOPs within 1 % of the paper's; GQA removes 3/4 of the K and V projections
    assert 3 * llama.p / (2 * paper.p) == pytest.approx(1.0, abs=0.01)
    assert paper.for_arch("gpt2").dims() == paper.dims()
    with pytest.raises(ValueError, match="^arch: unknown architecture 'bert'"):
        paper.for_arch("bert")
    with pytest.raises(ValueError, match="^arch: unknown architecture"):
        runner.run(runner.Config.quick(arch="bert"), log_stream=None)


# ---- the PyTorch reference ---------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_torch_reference_computes_our_forward_on_every_architecture(arch):
    pytest.importorskip("torch")
    size = TINY.for_arch(arch)
    m = ops.build_model(size, "float64")
    x = ops.build_inputs(m, size)
    ours = fpt_ref.forward(m, x)
    theirs = ops.torch_forward_fn(m, x)().numpy()
    tol = fpt_ref.tolerance_abs(m, m, size.s, np.max(np.abs(ours)))
    assert np.max(np.abs(ours - theirs)) <= tol
    wrong = m.replace(norm_eps=0.0)  # a mutation the reference must see: eps dropped
    assert np.max(np.abs(ours - ops.torch_forward_fn(wrong, x)().numpy())) > 1e3 * tol


def test_profile_times_the_parts_inside_real_forwards_and_restores_them():
    """``benchmarks/profile.py``: every part of a llama forward is timed, the parts fit inside the
    forward's time, the output is unchanged while timed, and the module is restored afterwards."""
    import importlib

    from fpt_ref.benchmarks.profile import PARTS, profile, report, timed_parts

    F = importlib.import_module("fpt_ref.forward")
    before = {name: getattr(F, name) for name in PARTS if name != "activation"}
    acts = dict(F.ACTIVATIONS)
    (z,) = ops.ladder("quick", ["xxs"], arch="llama")
    model = ops.build_model(z, "float64", np)
    x = ops.build_inputs(model, z, np)
    plain = F.forward(model, x)
    totals: dict = {}
    with timed_parts(totals):
        assert np.array_equal(F.forward(model, x), plain)
    assert set(totals) == set(PARTS) and all(v > 0 for v in totals.values())
    assert {name: getattr(F, name) for name in before} == before and F.ACTIVATIONS == acts
    r = profile("llama", "xxs", "float64", repeats=2, ladder="quick")
    assert all(v > 0 for v in r["parts_s"].values())
    assert sum(r["parts_s"].values()) <= r["forward_mean_s"]
    assert r["dense_flops"] < r["flops"] and 0 < r["ratio_matmul"] < r["ratio_matmul_if_only_dense"]
    assert "| _dense |" in report(r) and "everything else" in report(r)

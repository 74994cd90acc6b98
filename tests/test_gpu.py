"""The CuPy code path (marked ``gpu``; skipped cleanly without CuPy and a CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_hetero_model

import fpt_ref
from fpt_ref.model import convert, named_tensors

pytestmark = pytest.mark.gpu

PLAN = "mlp p=9; add_heads count=2 layers=0; heads v=6 layers=1 heads=0; attention k=7; hidden h=10; add_layer at=1"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_forward_matches_numpy(dtype):
    import cupy

    m = build_hetero_model(dtype=dtype)
    g = convert(m, cupy)
    x = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    out = fpt_ref.forward(g, x)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.dtype(dtype)
    ref = fpt_ref.forward(m, x)
    st = fpt_ref.error_stats(ref, out)
    assert st["max_ulp"] <= fpt_ref.tolerance_ulps(m, m, 5), st


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_plan_preserves_and_matches_numpy_blocks(dtype, tmp_path):
    import cupy

    m = build_hetero_model(dtype=dtype)
    res_gpu = fpt_ref.run_plan(convert(m, cupy), PLAN, seed=2)
    res_cpu = fpt_ref.run_plan(m, PLAN, seed=2)
    assert all(r.error["ok"] for r in res_gpu)
    # the same seeded free blocks and the same exact constrained blocks on both backends
    for (k, a), (k2, b) in zip(named_tensors(res_cpu[-1].model).items(), named_tensors(res_gpu[-1].model).items()):
        assert k == k2 and isinstance(b, cupy.ndarray)
        assert np.array_equal(a, cupy.asnumpy(b)), k
    path = tmp_path / "g.safetensors"
    fpt_ref.save(res_gpu[-1].model, path)
    back = fpt_ref.load(path, xp=cupy)
    assert isinstance(back.pos, cupy.ndarray)
    assert all(
        np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b))
        for a, b in zip(named_tensors(back).values(), named_tensors(res_gpu[-1].model).values())
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_trace_and_tolerance_scales_match_numpy(dtype):
    import cupy

    from fpt_ref.tolerance import natural_scales, preservation_scale

    m = build_hetero_model(dtype=dtype)
    g = convert(m, cupy)
    x = np.random.default_rng(1).integers(0, 50, size=(3, 5))
    tr, tr_cpu = fpt_ref.trace(g, x), fpt_ref.trace(m, x)
    assert isinstance(tr.output, cupy.ndarray) and isinstance(tr.layers[0].act, cupy.ndarray)
    assert bool(cupy.array_equal(tr.output, fpt_ref.forward(g, x)))  # the trace is the GPU forward pass
    rel = 1e-5 if dtype == "float32" else 1e-12  # GPU and CPU kernels round differently
    for nested in (True, False):
        assert preservation_scale(g, tr, nested) == pytest.approx(preservation_scale(m, tr_cpu, nested), rel=rel)
    scales_cpu = natural_scales(convert(m, dtype="float64"), x)
    for name, S in natural_scales(convert(g, dtype="float64"), x).items():
        assert S == pytest.approx(scales_cpu[name], rel=1e-12), name

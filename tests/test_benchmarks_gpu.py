"""The prepared GPU run (benchmarks/gpu/): the checks script in its CPU stand-in, its refusals,
how it judges targets, its summary, the in-place imports and the shell script's arguments.

The GPU figures themselves come only from a GPU machine (``bash benchmarks/gpu/run.sh``);
here CuPy is hidden, so every figure is the NumPy stand-in's and none is judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fpt_ref.benchmarks import runner
from fpt_ref.benchmarks.gpu import checks, inplace

from fpt_ref.expansions import _common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SH = os.path.join(ROOT, "benchmarks", "gpu", "run.sh")
SECTIONS = ("targets", "agreement", "timer", "host_input", "free_blocks")


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    monkeypatch.delenv("CUPY_TF32", raising=False)


@pytest.fixture
def smoke(tmp_path, no_cupy):
    free = _common.Builder.free
    lines: list = []
    res, status = checks.run(str(tmp_path), smoke=True, budget_s=60.0, log=lines.append)
    assert _common.Builder.free is free  # the timing wrapper is removed again
    return res, status, lines, tmp_path


def test_smoke_runs_every_section_on_the_stand_in_and_judges_nothing(smoke):
    res, status, lines, out = smoke
    assert status == 0 and res["mode"] == "smoke" and res["device"].startswith("NumPy stand-in")
    assert "NumPy stands in for the device" in res["notes"][0] and "NumPy stands in" in lines[0]
    for name in SECTIONS:
        assert "error" not in res[name] and "skipped" not in res[name], (name, res[name])
    assert json.loads((out / "gpu_checks.json").read_text())["targets"]["size"] == "xs"
    t = res["targets"]
    assert t["ratio_matmul"] > 0 and t["speedup"] > 0 and t["speedup_size"] == "xs"
    assert all(a["ok"] for k, a in res["agreement"].items() if isinstance(a, dict) and "ok" in a)
    fb = res["free_blocks"]["ops"]
    assert set(fb) == {"mlp", "add_heads", "heads", "attention", "hidden", "add_layer"}
    assert all(v["free_calls"] > 0 and v["free_entries"] > 0 and v["host_draw_s"] > 0 for v in fb.values())
    rows = res["targets_summary"]
    assert len(rows) >= 4 and all(r["met"] is None for r in rows)  # a stand-in figure is never judged
    assert all("[stand-in, not a GPU figure]" in line for line in lines if line.startswith(("targets ", "timer")))


def test_without_a_gpu_the_full_run_measures_nothing_and_exits_3(tmp_path, no_cupy):
    lines: list = []
    res, status = checks.run(str(tmp_path), smoke=False, log=lines.append)
    assert status == 3 and res["device"] is None and not any(name in res for name in SECTIONS)
    assert lines[0].startswith("no GPU: CuPy not importable")
    assert json.loads((tmp_path / "gpu_checks.json").read_text())["device"] is None
    assert checks.main([str(tmp_path)]) == 3


def test_tf32_on_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUPY_TF32", "1")
    assert checks.main([str(tmp_path), "--smoke"]) == 2
    assert "CUPY_TF32: is 1" in capsys.readouterr().err
    assert not (tmp_path / "gpu_checks.json").exists()


def _gpu_result(ratio, speedup, ok):
    return {
        "mode": "gpu",
        "device": "NVIDIA H100 80GB HBM3",
        "targets": {
            "size": "xxl",
            "ratio_matmul": ratio,
            "gpu_forward_tflops": 40.0,
            "gemm_n": 8192,
            "gemm_tflops": 50.0,
            "speedup": speedup,
            "speedup_size": "xxl",
            "numpy_forward_s": 8.0,
            "gpu_forward_s_at_speedup_size": 8.0 / speedup,
        },
        "agreement": {
            "l_float32": {"max_ulp_of_S": 3.0, "tol_ulp_of_S": 780.0, "max_abs": 1e-4, "tol_abs": 1e-2, "ok": ok}
        },
    }


def test_targets_are_judged_against_their_thresholds_on_a_gpu():
    rows = {r["name"].split(",")[0]: r["met"] for r in checks.target_rows(_gpu_result(0.69, 20.0, True))}
    assert rows == {
        "CuPy forward / cuBLAS GEMM rate": False,  # 0.69 < 0.7
        "CuPy forward speedup over NumPy (CPU)": True,  # 20 >= 20
        "CuPy vs NumPy agreement": True,
    }
    rows = {r["name"].split(",")[0]: r["met"] for r in checks.target_rows(_gpu_result(0.7, 19.9, False))}
    assert list(rows.values()) == [True, False, False]
    stand_in = dict(_gpu_result(0.9, 50.0, True), device="NumPy stand-in (no GPU)")
    assert {r["met"] for r in checks.target_rows(stand_in)} == {None}


def test_summary_has_the_targets_free_blocks_and_ladder_tables(smoke):
    res, status, lines, out = smoke
    ladder = runner.run(
        runner.Config.quick(
            sizes=["xxs"], backends=("numpy",), dtypes=("float32",), ops=("forward",), min_repeats=1, max_repeats=1
        ),
        log_stream=None,
    )
    (out / "fwd_results.json").write_text(json.dumps(ladder))
    path = checks.summarize(str(out))
    text = open(path).read()
    assert "| CuPy forward / cuBLAS GEMM rate, xs float32, TF32 off |" in text and "not judged" in text
    assert "**Free blocks drawn on the host** (xs, float32)" in text and "| hidden |" in text
    assert "## Forward ladder (`fwd_results.json`)" in text and "| xxs | 18k | float32 |" in text
    assert "Expansions and verify" not in text  # no exp_results.json: no section


def test_inplace_imports_the_benchmarks_of_this_tree():
    code = (
        "import benchmarks.gpu.inplace, fpt_ref.benchmarks.ops as o, fpt_ref.proofs as p; print(o.__file__, p.__file__)"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    ops_file, proofs_file = out.stdout.split()
    assert ops_file == os.path.join(ROOT, "benchmarks", "ops.py")
    assert proofs_file == os.path.join(ROOT, "proofs", "__init__.py")
    assert inplace.install(os.path.join(ROOT, "no-such-tree")) is False  # fpt_ref comes from elsewhere


def test_run_sh_parses_and_refuses_unknown_arguments():
    assert subprocess.run(["bash", "-n", RUN_SH], capture_output=True).returncode == 0
    bad = subprocess.run(["bash", RUN_SH, "--fast"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_agreement_verdict_follows_the_preservation_bound():
    import numpy as np
    from fpt_ref.benchmarks import ops

    import fpt_ref

    size = ops.QUICK[0]
    m = ops.build_model(size, "float32")
    x = ops.build_inputs(m, size)
    ref = fpt_ref.forward(m, x)
    same = checks._agreement(m, x, ref, ref.copy(), m, x)
    assert same["ok"] and same["max_abs"] == 0.0 and same["tol_ulp_of_S"] == fpt_ref.tolerance_ulps(m, m, size.s)
    tol = same["tol_abs"]
    for shift, ok in ((0.5 * tol, True), (2.0 * tol, False)):
        off = ref.copy()
        off[0, 0, 0] += np.float32(shift)  # one entry moved: inside, then outside the bound
        assert checks._agreement(m, x, ref, off, m, x)["ok"] is ok

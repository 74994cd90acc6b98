"""examples/: independent implementations pass `compare` on every case; wrong variants fail at the right layer.

The NumPy example always runs; the PyTorch and JAX ones run where the `interop` extra is installed.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fpt_ref.vectors.cases import FAMILIES
from fpt_ref.vectors.compare import compare

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def example(name):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return importlib.import_module(name)


def all_cases(root):
    with open(root / "index.json") as f:
        return [c["path"] for c in json.load(f)["cases"]]


def manifest(root, name):
    with open(root / name / "manifest.json") as f:
        return json.load(f)


def check(case_dir, tensors, path):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return compare(case_dir, path)


def run_all(vec, tmp_path, run_case, **kw):
    """Every case in float64 and float32; returns the failures and the largest tolerance fraction used."""
    failures, worst = [], 0.0
    for name in all_cases(vec):
        for dtype in ("float64", "float32"):
            out = run_case(str(vec / name), dtype, **kw)
            assert all(v.dtype == np.dtype(dtype) for v in out.values())
            r = check(vec / name, out, tmp_path / "a.safetensors")
            worst = max(worst, max(t.used for t in r.tensors))
            if not r.ok:
                failures.append((name, dtype, r.first_failing_residual))
    return failures, worst


def test_numpy_example_passes_every_case(vec, tmp_path):
    failures, worst = run_all(vec, tmp_path, example("numpy_model").run_case)
    assert failures == [] and worst < 1.0


def _last_layer(step):  # "attention k=6 layers=1 heads=0" -> 1
    return int(step.split("layers=")[1].split()[0])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_fixed_k_fails_at_the_expanded_layer(vec, tmp_path, dtype):
    """Logits scaled by the base model's 1/sqrt(k) instead of each head's current k."""
    nm = example("numpy_model")
    for fam in FAMILIES:
        base = manifest(vec, f"{fam.name}/base")["model"]["dims"]
        k_base = base["layers"][0]["heads"][0][0]
        m = manifest(vec, f"{fam.name}/attention")
        n = _last_layer(m["step"])  # the only grown head is in layer n
        ks = {kv[0] for L in base["layers"][:n] for kv in L["heads"]}
        want = f"residual.{n + 1}" if ks == {k_base} else "residual.1"
        d = vec / fam.name / "attention"
        r = check(d, nm.run_case(str(d), dtype, fixed_k=k_base), tmp_path / "a.safetensors")
        assert not r.ok and r.first_failing_residual == want, fam.name
        assert all(t.ok for t in r.tensors if t.name.startswith("residual.") and int(t.name[9:]) <= n)
        # the right scaling passes on the same case
        r = check(d, nm.run_case(str(d), dtype), tmp_path / "b.safetensors")
        assert r.ok
    # heterogeneous base (k differs per layer): layer 1 is the first with k != k of layer 0
    d = vec / "tok-full-eps0" / "base"
    kb = manifest(vec, "tok-full-eps0/base")["model"]["dims"]["layers"]
    assert kb[0]["heads"][0][0] != kb[1]["heads"][0][0]
    r = check(d, nm.run_case(str(d), dtype, fixed_k=kb[0]["heads"][0][0]), tmp_path / "c.safetensors")
    assert r.first_failing_residual == "residual.2"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_no_eps_fails_at_layer_0(vec, tmp_path, dtype):
    nm = example("numpy_model")
    for fam in FAMILIES:
        for case in ("base", "hidden", "plan.6-add_layer"):
            d = vec / fam.name / case
            eps = manifest(vec, f"{fam.name}/{case}")["model"]["norm_eps"]
            r = check(d, nm.run_case(str(d), dtype, ignore_eps=True), tmp_path / "a.safetensors")
            if eps > 0:
                assert not r.ok and r.first_failing_residual == "residual.1", (fam.name, case)
            else:  # nothing to ignore: the variant is then correct
                assert r.ok, (fam.name, case)


def test_example_scripts_and_compare_cli(vec, tmp_path):
    d = vec / "tok-causal-eps" / "attention"
    k_base = manifest(vec, "tok-causal-eps/base")["model"]["dims"]["layers"][0]["heads"][0][0]
    script = os.path.join(EXAMPLES, "numpy_model.py")
    for args, code in ((["--dtype", "float32"], 0), (["--wrong-fixed-k", str(k_base)], 1)):
        out = tmp_path / "a.npz"
        subprocess.run([sys.executable, script, str(d), "-o", str(out), *args], check=True, timeout=120)
        r = subprocess.run(
            [sys.executable, "-m", "fpt_ref", "compare", str(d), str(out)], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == code, r.stdout + r.stderr
    assert "first failing residual: residual.2 (the output of layer 1)" in r.stdout


# ---- fused layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["grouped", "interleaved"])
def test_fused_round_trip_and_equivalence(vec, layout):
    fz = example("fused")
    t = load_file(vec / "real-full-eps" / "plan.6-add_layer" / "model.safetensors")
    fused, sizes = fz.fuse_model(t, layout)
    assert any(len(set(zip(*kv))) > 1 for kv in sizes.values())  # some layer has heads of different (k, v)
    back = fz.unfuse_model(fused, sizes, layout)
    assert set(back) == set(t) and all(np.array_equal(back[k], t[k]) for k in t)
    x = np.random.default_rng(0).normal(size=(3, t["pos"].shape[1]))  # [3, h]
    for n, (ks, vs) in sizes.items():
        qkv = x @ fused[f"layers.{n}.w_qkv"]  # [3, sum(2k + v)]
        hs = []
        for e, (sq, sk, sv) in enumerate(fz.qkv_slices(ks, vs, layout)):
            # same columns, so equal up to the BLAS kernel's summation order
            for sl, w in ((sq, "w_q"), (sk, "w_k"), (sv, "w_v")):
                np.testing.assert_allclose(qkv[:, sl], x @ t[f"layers.{n}.heads.{e}.{w}"], rtol=1e-13, atol=1e-13)
            hs.append(qkv[:, sv])
        per_head = sum(hh @ t[f"layers.{n}.heads.{e}.w_o"] for e, hh in enumerate(hs))
        np.testing.assert_allclose(
            np.concatenate(hs, axis=1) @ fused[f"layers.{n}.w_o"], per_head, rtol=1e-12, atol=1e-12
        )


def test_fused_layout_by_hand():
    fz = example("fused")
    wq = [np.full((2, 1), 1.0), np.full((2, 2), 2.0)]
    wk = [np.full((2, 1), 3.0), np.full((2, 2), 4.0)]
    wv = [np.full((2, 3), 5.0), np.full((2, 1), 6.0)]
    g = fz.fuse_qkv(wq, wk, wv, "grouped")[0].tolist()
    assert g == [1, 2, 2, 3, 4, 4, 5, 5, 5, 6]
    i = fz.fuse_qkv(wq, wk, wv, "interleaved")[0].tolist()
    assert i == [1, 3, 5, 5, 5, 2, 2, 4, 4, 6]
    w_o = fz.fuse_w_o([np.ones((3, 2)), np.zeros((1, 2))])
    assert w_o.shape == (4, 2)
    with pytest.raises(ValueError, match="v_sizes"):
        fz.split_w_o(w_o, [3, 2])
    with pytest.raises(ValueError, match="layout"):
        fz.qkv_slices([1], [1], "packed")
    with pytest.raises(ValueError, match="w_qkv"):
        fz.split_qkv(np.zeros((2, 9)), [1, 2], [3, 1])


# ---- PyTorch and JAX (interop extra) ---------------------------------------------------


@pytest.fixture
def torch_one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead
    yield torch
    torch.set_num_threads(n)


@pytest.mark.parametrize("fused", [False, True])
def test_torch_example_passes_every_case(vec, tmp_path, torch_one_thread, fused):
    tm = example("torch_model")
    failures, worst = run_all(vec, tmp_path, tm.run_case, fused=fused)
    assert failures == [] and worst < 1.0


def test_torch_wrong_variants(vec, tmp_path, torch_one_thread):
    tm = example("torch_model")
    d = vec / "tok-causal-eps" / "attention"
    k_base = manifest(vec, "tok-causal-eps/base")["model"]["dims"]["layers"][0]["heads"][0][0]
    for dtype in ("float64", "float32"):
        r = check(d, tm.run_case(str(d), dtype, fixed_k=k_base), tmp_path / "a.safetensors")
        assert r.first_failing_residual == "residual.2"
        r = check(d, tm.run_case(str(d), dtype, ignore_eps=True), tmp_path / "a.safetensors")
        assert r.first_failing_residual == "residual.1"


def test_jax_example_passes_every_case(vec, tmp_path):
    pytest.importorskip("jax")
    jm = example("jax_model")
    failures, worst = run_all(vec, tmp_path, jm.run_case)
    assert failures == [] and worst < 1.0
    d = vec / "real-full-eps" / "attention"
    r = check(d, jm.run_case(str(d), "float32", ignore_eps=True), tmp_path / "a.safetensors")
    assert r.first_failing_residual == "residual.1"


def test_examples_refuse_real_architecture_cases_in_one_line(tmp_path, capsys):
    """The examples implement the paper's model: a case of another architecture (fpt-ref/2 file)
    is refused with one line naming what it needs, exit 2, instead of a KeyError."""
    from fpt_ref.vectors.cases import load_config
    from fpt_ref.vectors.write import write_vectors

    write_vectors(tmp_path, load_config("tiny"), seed=0, archs="llama")
    case = next(p for p in all_cases(tmp_path))
    with pytest.raises(SystemExit) as exc:
        example("numpy_model").main([str(tmp_path / case), "-o", str(tmp_path / "out.npz")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fpt-ref/2" in err[0] and "model.needs" in err[0]
    assert not (tmp_path / "out.npz").exists()

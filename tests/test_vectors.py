"""`fpt-ref vectors`: the case catalogue, the files written, the manifest, the tolerance policy."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import fpt_ref
from fpt_ref.model import dims
from fpt_ref.tolerance import decidable, path_lengths, tolerances, top2_gap
from fpt_ref.vectors.cases import FAMILIES, load_config
from fpt_ref.vectors.write import write_vectors

EXPANSIONS = ("mlp", "add_heads", "heads", "attention", "hidden", "add_layer")
FILES = ("model.safetensors", "inputs.safetensors", "outputs.safetensors", "manifest.json", "vectors.npz", "model.npz")


def cases(root):
    with open(root / "index.json") as f:
        return json.load(f)["cases"]


def manifest(root, name):
    with open(root / name / "manifest.json") as f:
        return json.load(f)


def test_every_case_is_written(vec):
    idx = cases(vec)
    names = {c["case"] for c in idx}
    assert len(idx) == len(FAMILIES) * 13
    for fam in FAMILIES:
        assert f"{fam.name}/base" in names
        for op in EXPANSIONS:
            assert f"{fam.name}/{op}" in names
            m = manifest(vec, f"{fam.name}/{op}")
            assert m["kind"] == "expansion" and m["parent"] == f"{fam.name}/base"
            assert m["step"].split()[0] == op
        plan = [c for c in idx if c["case"].startswith(f"{fam.name}/plan.")]
        assert [c["step"].split()[0] for c in plan] == list(EXPANSIONS)  # the composed plan has all six
        parents = [f"{fam.name}/base"] + [c["case"] for c in plan[:-1]]
        assert [c["parent"] for c in plan] == parents
    for c in idx:
        for fname in FILES:
            assert (vec / c["path"] / fname).is_file(), (c["case"], fname)


def _inputs(case_dir):
    t = load_file(os.path.join(case_dir, "inputs.safetensors"))
    assert len(t) == 1
    return next(iter(t.items()))


def test_round_trip_is_bit_exact(vec):
    """Load each written case and recompute with fpt_ref.forward / residual_streams."""
    for c in cases(vec):
        d = vec / c["path"]
        model = fpt_ref.load(d / "model.safetensors")
        name, x = _inputs(d)
        assert name == ("tokens" if model.embed is not None else "inputs")
        assert x.dtype == (np.int64 if name == "tokens" else np.float64)
        out = load_file(d / "outputs.safetensors")
        assert set(out) == {"output"} | {f"residual.{n}" for n in range(model.N + 1)}
        assert all(a.dtype == np.float64 for a in out.values())
        assert np.array_equal(np.asarray(fpt_ref.forward(model, x)), out["output"])
        streams = fpt_ref.residual_streams(model, x)
        for n, r in enumerate(streams):
            assert np.array_equal(np.asarray(r), out[f"residual.{n}"]), (c["case"], n)
        with np.load(d / "vectors.npz") as z:
            assert set(z.files) == set(out) | {name}
            assert np.array_equal(z[name], x)
            for k, v in out.items():
                assert np.array_equal(z[k], v)
        with np.load(d / "model.npz") as z:
            params = load_file(d / "model.safetensors")
            assert set(z.files) == set(params)
            for k, v in params.items():
                assert np.array_equal(z[k], v)


def test_manifest_describes_the_case(vec):
    for c in cases(vec):
        d = vec / c["path"]
        m = manifest(vec, c["case"])
        model = fpt_ref.load(d / "model.safetensors")
        assert m["case"] == c["case"]
        assert m["model"]["dims"] == json.loads(json.dumps(dims(model)))
        assert m["model"]["norm_eps"] == model.norm_eps and m["model"]["causal"] == model.causal
        assert set(m["tolerance"]) >= {"float32", "float64"}
        assert m["seed"] == 0 and m["versions"]["numpy"] == np.__version__
        assert m["versions"]["fpt_ref"] == fpt_ref.__version__
        assert m["outputs"]["output"][:2] == m["inputs"]["shape"][:2]
        if m["kind"] == "base":
            assert m["blocks"] == [] and m["parent"] is None
        else:
            assert m["blocks"] and all(b["role"] in ("copied", "scaled", "zero", "free") for b in m["blocks"])


def _block(arr, index):
    return arr[tuple(slice(a, b) for a, b in index)]


def test_manifest_blocks_match_the_files(vec):
    """Zero blocks are zero in the file; copied and scaled blocks come from the parent's tensor."""
    for c in cases(vec):
        m = manifest(vec, c["case"])
        if m["kind"] == "base":
            continue
        t = load_file(vec / c["path"] / "model.safetensors")
        parent = load_file(vec / m["parent"] / "model.safetensors")
        for b in m["blocks"]:
            blk = _block(t[b["tensor"]], b["index"])
            if b["role"] == "zero":
                assert not np.any(blk), (c["case"], b)
            elif b["role"] in ("copied", "scaled") and m["step"].split()[0] != "add_layer":
                old = _block(parent[b["tensor"]], b["index"])
                want = old if b["role"] == "copied" else old * b["factor"]
                assert np.array_equal(blk, want), (c["case"], b)


def _roles(m, role):
    return {b["tensor"] for b in m["blocks"] if b["role"] == role}


def test_single_expansions_have_the_theorems_constraints(vec):
    """docs/spec.md section 2's table, read off each single-expansion manifest."""
    fam = "tok-causal-eps"
    base = manifest(vec, f"{fam}/base")["model"]["dims"]
    N, h = base["N"], base["h"]
    m = manifest(vec, f"{fam}/mlp")  # M_l2 = 0
    assert "layers.0.w_l2" in _roles(m, "zero")
    m = manifest(vec, f"{fam}/add_heads")  # M_O = 0 of the new head
    E = len(base["layers"][N - 1]["heads"])
    assert _roles(m, "zero") == {f"layers.{N - 1}.heads.{E}.w_o"}
    m = manifest(vec, f"{fam}/heads")  # M_O,e = 0
    assert _roles(m, "zero") == {"layers.0.heads.0.w_o"}
    m = manifest(vec, f"{fam}/attention")  # M_K = 0, W_K scaled by sqrt(k^/k)
    k0 = base["layers"][N - 1]["heads"][0][0]
    k1 = manifest(vec, f"{fam}/attention")["model"]["dims"]["layers"][N - 1]["heads"][0][0]
    assert _roles(m, "zero") == {f"layers.{N - 1}.heads.0.w_k"}
    (sc,) = [b for b in m["blocks"] if b["role"] == "scaled"]
    assert sc["tensor"] == f"layers.{N - 1}.heads.0.w_k" and sc["factor"] == pytest.approx(math.sqrt(k1 / k0))
    m = manifest(vec, f"{fam}/hidden")  # zero columns of P, I, W_O, W_l2, b_l2; gains scaled sqrt(h/h^)
    h1 = m["model"]["dims"]["h"]
    assert {"pos", "embed", "layers.0.w_l2", "layers.0.b_l2", "layers.0.heads.0.w_o"} <= _roles(m, "zero")
    assert all(b["factor"] == pytest.approx(math.sqrt(h / h1)) for b in m["blocks"] if b["role"] == "scaled")
    assert m["model"]["norm_eps"] == pytest.approx(manifest(vec, f"{fam}/base")["model"]["norm_eps"] * h / h1)
    m = manifest(vec, f"{fam}/add_layer")  # new layer's W_O, W_l2, b_l2 = 0
    at = int(m["step"].split("at=")[1].split()[0])
    assert {f"layers.{at}.w_l2", f"layers.{at}.b_l2", f"layers.{at}.heads.0.w_o"} <= _roles(m, "zero")


def test_cases_cover_the_options(vec):
    seen = set()
    hetero_layers = hetero_heads = False
    for c in cases(vec):
        m = manifest(vec, c["case"])
        seen.add((m["inputs"]["name"], m["model"]["causal"], m["model"]["norm_eps"] > 0))
        layers = m["model"]["dims"]["layers"]
        hetero_layers |= len({(L["p"], len(L["heads"])) for L in layers}) > 1
        hetero_heads |= any(len({tuple(kv) for kv in L["heads"]}) > 1 for L in layers)
    assert {s[0] for s in seen} == {"tokens", "inputs"}
    assert {s[1] for s in seen} == {True, False} and {s[2] for s in seen} == {True, False}
    for a in ("tokens", "inputs"):  # every pair of options occurs
        assert {s[1] for s in seen if s[0] == a} == {True, False}
        assert {s[2] for s in seen if s[0] == a} == {True, False}
    assert {s[2] for s in seen if s[1]} == {True, False}
    assert hetero_layers and hetero_heads


def test_no_float32_argmax_near_ties(vec):
    for c in cases(vec):
        m = manifest(vec, c["case"])
        out = load_file(vec / c["path"] / "outputs.safetensors")["output"]
        t = m["tolerance"]["float32"]["output"]
        assert np.all(decidable(out, t["atol"], t["rtol"])), c["case"]
        assert m["argmax"]["near_ties_float32"] == [] and m["argmax"]["near_ties_float64"] == []
        assert m["argmax"]["min_top2_gap"] == pytest.approx(float(top2_gap(out).min()))


def test_path_lengths_by_hand():
    # h=4, k=2, v=3, p=6, E=1, s=5: per layer 4h + k + 2s + v + p = 16 + 2 + 10 + 3 + 6 = 37, + 28 elementwise
    model = fpt_ref.init_model(h=4, p=6, n_heads=1, k=2, v=3, n_layers=2, out_dim=3, max_seq=5)
    assert path_lengths(model, 5) == {"residual.0": 3, "residual.1": 68, "residual.2": 133, "output": 138}


def _hand_model(layers):
    """h=2, one token; with ``layers`` one layer whose W_O = 0 and whose MLP is worked out by hand."""
    f = np.array
    lay = fpt_ref.Layer(
        norm_mha=f([1.0, 1.0]),
        heads=(fpt_ref.Head(f([[1.0], [0.0]]), f([[1.0], [0.0]]), f([[1.0], [0.0]]), f([[0.0, 0.0]])),),
        norm_mlp=f([1.0, 1.0]),
        w_l1=f([[1.0], [0.0]]),
        b_l1=f([0.0]),
        w_l2=f([[2.0, -3.0]]),
        b_l2=f([0.5, 0.5]),
    )
    return fpt_ref.Model(
        embed=f([[1.0, -2.0]]), pos=f([[0.5, 0.5]]), w_out=f([[1.0], [1.0]]), layers=(lay,) if layers else ()
    )


def test_natural_scales_and_tolerances_by_hand():
    """X_1 = [1, -2] + [0.5, 0.5] = [1.5, -1.5]; Norm(X_1) = [1, -1]; ReLU(a) = 1;
    X_2 = X_1 + 1 * [2, -3] + [0.5, 0.5] = [4, -4]; output = 4 - 4 = 0 (cancellation)."""
    x = np.array([[0]])
    u32, u64 = 2.0**-24, 2.0**-53
    m0 = _hand_model(False)
    ref0 = {"residual.0": np.array([[[1.5, -1.5]]]), "output": np.array([[[0.0]]])}
    assert np.array_equal(np.asarray(fpt_ref.forward(m0, x)), ref0["output"])
    tol = tolerances(m0, x, ref0)
    assert tol["float32"]["residual.0"]["scale"] == 2.5  # max(|1| + |0.5|, |-2| + |0.5|)
    # M_1 = |I| + |P| = [1.5, 2.5]; output scale M_1 @ |W_out| = 4, although the output is 0
    assert tol["float32"]["output"]["scale"] == 4.0
    assert tol["float32"]["output"]["L"] == 6  # C_IN 3 + h 2 + C_OUT 1
    assert tol["float32"]["output"]["rtol"] == 6 * (u32 + u64)
    assert tol["float32"]["output"]["atol"] == 6 * (u32 + u64) * 4.0
    assert tol["float64"]["residual.0"]["atol"] == 3 * (2 * u64) * 2.5

    m1 = _hand_model(True)
    streams = fpt_ref.residual_streams(m1, x)
    assert np.array_equal(streams[1], [[[4.0, -4.0]]]) and np.array_equal(fpt_ref.forward(m1, x), [[[0.0]]])
    ref1 = {"residual.0": streams[0], "residual.1": streams[1], "output": np.array([[[0.0]]])}
    tol = tolerances(m1, x, ref1)["float32"]
    # M_2 = M_1 + |H||W_O| (W_O = 0) + |ReLU(a)||W_l2| + |b_l2| = [1.5, 2.5] + 1 * [2, 3] + [0.5, 0.5]
    assert tol["residual.1"]["scale"] == 6.0
    assert tol["output"]["scale"] == 10.0  # M_2 @ |W_out| = 4 + 6, although the output is 4 - 4 = 0
    # per layer 4h + k + 2s + v + p = 8 + 1 + 2 + 1 + 1 = 13, + C_LAYER 28
    assert (tol["residual.1"]["L"], tol["output"]["L"]) == (3 + 13 + 28, 3 + 13 + 28 + 2 + 1)


def test_decidable_argmax():
    out = np.array([[1.0, 0.9, 0.0], [1.0, 1.0 - 1e-9, 0.0], [0.0, 0.0, 5.0]])
    assert decidable(out, atol=1e-6, rtol=1e-6).tolist() == [True, False, True]
    assert decidable(out, atol=0.0, rtol=0.0).tolist() == [True, True, True]
    assert decidable(out, atol=0.06, rtol=0.0).tolist() == [False, False, True]


def test_vectors_are_deterministic(vec, tmp_path):
    write_vectors(tmp_path / "again", load_config("tiny"), seed=0)
    write_vectors(tmp_path / "other", load_config("tiny"), seed=1)
    name = "real-full-eps/plan.6-add_layer"
    a = load_file(vec / name / "outputs.safetensors")
    b = load_file(tmp_path / "again" / name / "outputs.safetensors")
    c = load_file(tmp_path / "other" / name / "outputs.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["output"], c["output"])


def test_config_file(tmp_path):
    cfg = tmp_path / "mine.json"
    cfg.write_text(json.dumps({"h": 6, "layers": 1, "seq": 3}))
    c = load_config(str(cfg))
    assert (c.h, c.layers, c.seq, c.p, c.name) == (6, 1, 3, 16, "mine")
    write_vectors(tmp_path / "out", c)
    m = manifest(tmp_path / "out", "tok-causal-eps/base")
    assert m["model"]["dims"]["h"] == 6 and m["model"]["dims"]["N"] == 1 and m["inputs"]["shape"] == [2, 3]
    with safe_open(str(tmp_path / "out" / "tok-causal-eps" / "base" / "model.safetensors"), "numpy") as f:
        assert f.metadata()["format"] == "fpt-ref/1"
    cfg.write_text(json.dumps({"h": 6, "colour": 3}))
    with pytest.raises(ValueError, match="colour"):
        load_config(str(cfg))
    cfg.write_text(json.dumps({"h": 0}))
    with pytest.raises(ValueError, match="h must be an integer >= 1"):
        load_config(str(cfg))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_config(str(tmp_path / "nope.json"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fpt_ref", *args], capture_output=True, text=True, timeout=120)


def test_cli_vectors(tmp_path):
    r = _cli("vectors", "--config", "tiny", "--seed", "3", "-o", str(tmp_path / "v"))
    assert r.returncode == 0, r.stderr
    assert "wrote 52 cases" in r.stdout
    assert manifest(tmp_path / "v", "real-causal/hidden")["seed"] == 3
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"plan": "mlp p=2"}))  # does not grow p=16
    r = _cli("vectors", "--config", str(cfg), "-o", str(tmp_path / "w"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "p=2" in r.stderr, r.stderr
    r = _cli("vectors", "--config", "huge", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "huge" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "file").write_text("")
    r = _cli("vectors", "-o", str(tmp_path / "file"))
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_a_plan_failing_in_a_later_family_writes_nothing_and_names_the_family(tmp_path):
    from fpt_ref.vectors.cases import Config

    cfg = Config(plan="heads v=6 layers=0 heads=0")  # grows tiny's v=4, but not a family whose v is 6
    with pytest.raises(ValueError, match="family tok-full-eps0: v: v=6 does not grow"):
        write_vectors(tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_config_rejects_out_dim_below_2_and_nonfinite_eps():
    from fpt_ref.vectors.cases import Config

    with pytest.raises(ValueError, match="out_dim must be at least 2"):
        Config(out_dim=1)
    with pytest.raises(ValueError, match="eps must be"):
        Config(eps=float("inf"))


def test_write_vectors_errors_name_its_parameters(tmp_path):
    from fpt_ref.vectors.cases import Config

    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="^out_dir: .* exists and is not a directory"):
        write_vectors(tmp_path / "file", Config())
    for seed, msg in ((-1, "^seed: must be at least 0, got -1"), (True, "^seed: expected an integer, got True")):
        with pytest.raises(ValueError, match=msg):
            write_vectors(tmp_path / "out", Config(), seed=seed)
    assert not (tmp_path / "out").exists()
    r = _cli("vectors", "--seed", "-1", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fpt-ref vectors: argument --seed: must be at least 0, got -1"
    ]

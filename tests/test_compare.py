"""`fpt-ref compare`: reports on good and corrupted ACTUAL files, exit codes."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fpt_ref.vectors.compare import check_argmax, compare, compare_tensor, format_report

CASE = "tok-causal-eps/attention"  # N = 2: residual.0, residual.1, residual.2, output


@pytest.fixture(scope="module")
def ref(vec):
    return load_file(vec / CASE / "outputs.safetensors")


@pytest.fixture(scope="module")
def tol(vec):
    with open(vec / CASE / "manifest.json") as f:
        return json.load(f)["tolerance"]


def write(path, tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def by_name(report):
    return {t.name: t for t in report.tensors}


def test_exact_copy_passes(vec, ref, tmp_path):
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", ref))
    assert r.ok and r.first_failing_residual is None
    assert [t.name for t in r.tensors] == ["residual.0", "residual.1", "residual.2", "output"]
    assert all(t.max_abs == 0 and t.dtype == "float64" for t in r.tensors)
    assert r.argmax["ok"] and r.argmax["positions"] == 12 and r.argmax["near_ties"] == []
    assert format_report(r).endswith("PASS")


def test_float32_rounding_passes_and_ulps_are_float32(vec, ref, tmp_path):
    a = {k: v.astype(np.float32) for k, v in ref.items()}
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a))
    assert r.ok
    for t in r.tensors:
        assert t.dtype == "float32" and t.max_abs > 0
        assert t.max_ulp <= 0.5  # rounding to nearest: at most half an ulp of the largest entry
        assert t.max_abs < 1e-6


def test_npz_actual(vec, ref, tmp_path):
    np.savez(tmp_path / "a.npz", **ref, tokens=np.zeros((2, 6), dtype=np.int64))
    r = compare(vec / CASE, tmp_path / "a.npz")
    assert r.ok and r.extra == ()


def test_missing_tensor(vec, ref, tmp_path):
    a = {k: v for k, v in ref.items() if k != "residual.1"}
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a), require_residuals=True)
    t = by_name(r)
    assert not r.ok and t["residual.1"].status == "missing"
    assert r.first_failing_residual == "residual.1"
    assert t["residual.2"].ok and t["output"].ok
    assert "residual.1: missing from ACTUAL" in format_report(r)


def _only(ref, *names, **changed):
    out = {k: v for k, v in ref.items() if k in names}
    for k, scale in changed.items():
        out[k.replace("_", ".")] = out[k.replace("_", ".")] * scale
    return out


# (label, tensors given, require_residuals, ok, statuses expected by name)
GIVEN = [
    ("output only", lambda r: _only(r, "output"), False, True, {"output": "pass", "residual.0": "not given"}),
    ("output only, residuals required", lambda r: _only(r, "output"), True, False, {"residual.0": "missing"}),
    ("no output", lambda r: _only(r, "residual.0", "residual.1"), False, False, {"output": "missing"}),
    ("wrong output, no residuals", lambda r: _only(r, "output", output=1.001), False, False, {"output": "fail"}),
    (
        "some residuals, one wrong",
        lambda r: _only(r, "output", "residual.0", "residual.2", residual_2=1.001),
        False,
        False,
        {"residual.1": "not given", "residual.2": "fail", "residual.0": "pass"},
    ),
]


@pytest.mark.parametrize("label,make,require,ok,statuses", GIVEN, ids=[g[0] for g in GIVEN])
def test_residual_streams_not_given(vec, ref, tmp_path, label, make, require, ok, statuses):
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", make(ref)), require_residuals=require)
    t = by_name(r)
    assert r.ok == ok
    for name, status in statuses.items():
        assert t[name].status == status, name
    text = format_report(r)
    assert text.rstrip().endswith("PASS") == ok
    if r.not_given:
        assert "not given in ACTUAL (not checked)" in text
    if label == "some residuals, one wrong":
        assert r.first_failing_residual == "residual.2"


def test_nan_and_inf(vec, ref, tmp_path):
    a = dict(ref)
    a["residual.2"] = ref["residual.2"].copy()
    a["residual.2"][1, 3, 0] = np.nan
    a["output"] = ref["output"].copy()
    a["output"][0, 0, 0] = np.inf
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a))
    t = by_name(r)
    assert t["residual.2"].status == "nonfinite" and t["residual.2"].worst == (1, 3, 0)
    assert "1 NaN and 0 inf" in t["residual.2"].message
    assert t["output"].status == "nonfinite" and "0 NaN and 1 inf" in t["output"].message
    assert not r.argmax["ok"] and "argmax not checked" in r.argmax["message"]
    assert r.first_failing_residual == "residual.2" and not r.ok


def test_wrong_shape(vec, ref, tmp_path):
    a = dict(ref, output=ref["output"][0], **{"residual.0": ref["residual.0"].transpose(0, 2, 1)})
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a))
    t = by_name(r)
    assert t["output"].status == "shape" and "[6, 6] differs from the reference's [2, 6, 6]" in t["output"].message
    assert t["residual.0"].status == "shape" and r.first_failing_residual == "residual.0"
    assert not r.argmax["ok"]


def test_wrong_dtype(vec, ref, tmp_path):
    a = dict(ref, output=ref["output"].astype(np.float16), **{"residual.1": ref["residual.1"].astype(np.int32)})
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a))
    t = by_name(r)
    assert t["output"].status == "dtype" and "float16" in t["output"].message
    assert t["residual.1"].status == "dtype" and "int32" in t["residual.1"].message
    assert r.first_failing_residual == "residual.1" and not r.ok


def test_bfloat16_is_reported_not_raised(vec, ref, tmp_path):
    """A BF16 tensor (no NumPy dtype) in a hand-made safetensors file."""
    tensors = {k: v for k, v in ref.items() if k != "residual.2"}
    path = write(tmp_path / "base.safetensors", tensors)
    # rebuild the file with one extra BF16 tensor named residual.2
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    shape = list(ref["residual.2"].shape)
    nbytes = int(np.prod(shape)) * 2
    header["residual.2"] = {"dtype": "BF16", "shape": shape, "data_offsets": [len(data), len(data) + nbytes]}
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    (tmp_path / "bf16.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb + data + b"\0" * nbytes)
    r = compare(vec / CASE, tmp_path / "bf16.safetensors")
    t = by_name(r)
    assert t["residual.2"].status in ("unreadable", "dtype") and not r.ok
    assert "BF16" in t["residual.2"].message or "bfloat16" in t["residual.2"].message
    assert r.first_failing_residual == "residual.2"


def test_perturbation_names_the_first_failing_layer(vec, ref, tol, tmp_path):
    a = {k: v.copy() for k, v in ref.items()}
    t = tol["float64"]["residual.1"]
    i = (1, 2, 3)
    bound = t["atol"] + t["rtol"] * abs(ref["residual.1"][i])
    a["residual.1"][i] += 0.5 * bound  # within tolerance
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a))
    # the sum rounds to float64: the perturbation is exact only to ~1% of such a small bound
    assert r.ok and by_name(r)["residual.1"].used == pytest.approx(0.5, rel=0.02)
    a["residual.1"][i] += 2.0 * bound  # now 2.5 x the bound
    r = compare(vec / CASE, write(tmp_path / "b.safetensors", a))
    res = by_name(r)["residual.1"]
    assert not r.ok and res.status == "fail" and res.worst == i and res.used == pytest.approx(2.5, rel=0.02)
    assert r.first_failing_residual == "residual.1" and by_name(r)["residual.2"].ok
    assert "first failing residual: residual.1 (the output of layer 0)" in format_report(r)


def test_output_only_failure_points_at_w_out(vec, ref, tmp_path):
    a = dict(ref, output=ref["output"] * 1.001)
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", a))
    assert not r.ok and r.first_failing_residual is None
    assert "all residuals agree; output fails" in format_report(r)


def test_extra_tensors_are_listed(vec, ref, tmp_path):
    r = compare(vec / CASE, write(tmp_path / "a.safetensors", dict(ref, logits_debug=ref["output"])))
    assert r.ok and r.extra == ("logits_debug",)


def test_argmax_rule():
    ref = np.array([[[2.0, 1.0, 0.0], [1.0, 1.0 + 1e-12, 0.0]]])  # [1, 2, 3]: second position a near-tie
    tol = {"float64": {"atol": 1e-9, "rtol": 1e-9}}
    flip_tie = np.array([[[2.0, 1.0, 0.0], [1.0 + 1e-12, 1.0, 0.0]]])
    res = compare_tensor("output", ref, flip_tie, tol)
    assert res.ok
    a = check_argmax(ref, res, flip_tie, tol)
    assert a["ok"] and a["near_ties"] == [[0, 1]] and a["mismatches"] == []
    flip_clear = np.array([[[1.0, 2.0, 0.0], [1.0, 1.0 + 1e-12, 0.0]]])
    res = compare_tensor("output", ref, flip_clear, tol)
    a = check_argmax(ref, res, flip_clear, tol)
    assert not a["ok"] and a["mismatches"] == [{"index": [0, 0], "reference": 0, "actual": 1}]


def test_user_errors(vec, ref, tmp_path):
    good = write(tmp_path / "a.safetensors", ref)
    with pytest.raises(FileNotFoundError, match="^case_dir: "):
        compare(tmp_path / "nowhere", good)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        compare(tmp_path, good)
    with pytest.raises(FileNotFoundError, match="top directory of the vectors"):
        compare(vec, good)
    with pytest.raises(FileNotFoundError, match="^actual: "):
        compare(vec / CASE, tmp_path / "missing.safetensors")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="'.txt'"):
        compare(vec / CASE, tmp_path / "a.txt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        compare(vec / CASE, tmp_path / "junk.safetensors")
    (tmp_path / "junk.npz").write_bytes(b"\x01" * 20)
    with pytest.raises(ValueError, match="not a readable npz"):
        compare(vec / CASE, tmp_path / "junk.npz")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fpt_ref", "compare", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_cli_exit_codes(vec, ref, tmp_path):
    good = write(tmp_path / "good.safetensors", ref)
    r = _cli(vec / CASE, good)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("PASS"), r.stdout + r.stderr
    bad = {k: v.copy() for k, v in ref.items()}
    bad["residual.2"] += 1e-3
    r = _cli(vec / CASE, write(tmp_path / "bad.safetensors", bad), "--json")
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert rep["ok"] is False and rep["first_failing_residual"] == "residual.2"
    assert [t["status"] for t in rep["tensors"]] == ["pass", "pass", "fail", "pass"]  # output is its own tensor
    r = _cli(tmp_path / "nowhere", good)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "case_dir: " in r.stderr
    r = _cli(vec / CASE, tmp_path / "missing.npz")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.npz" in r.stderr


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04junk", "npy"])
def test_unreadable_npz_is_a_value_error(vec, tmp_path, content):
    path = tmp_path / "a.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))  # a single .npy array under an .npz name
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="^actual: .*(not a readable npz file|not an .npz archive)"):
        compare(vec / CASE, path)


def test_directory_as_actual(vec, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        compare(vec / CASE, tmp_path)


@pytest.mark.parametrize("edit", ["tolerance=1", "outputs=[]", "drop f32 output", "atol=a"])
def test_corrupt_manifest_is_a_value_error(vec, tmp_path, edit):
    import json
    import shutil

    case = tmp_path / "case"
    shutil.copytree(vec / CASE, case)
    man = json.loads((case / "manifest.json").read_text())
    if edit == "tolerance=1":
        man["tolerance"] = 1
    elif edit == "outputs=[]":
        man["outputs"] = []
    elif edit == "drop f32 output":
        del man["tolerance"]["float32"]["output"]
    else:
        man["tolerance"]["float64"]["output"]["atol"] = "a"
    (case / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="is not a vectors manifest"):
        compare(case, tmp_path / "whatever.npz")


def test_cli_output_only_and_require_residuals(vec, ref, tmp_path):
    path = write(tmp_path / "logits.safetensors", _only(ref, "output"))
    r = _cli(vec / CASE, path)
    assert r.returncode == 0 and "not given in ACTUAL" in r.stdout, r.stdout + r.stderr
    r = _cli(vec / CASE, path, "--require-residuals")
    assert r.returncode == 1 and "residual.0: missing from ACTUAL" in r.stdout, r.stdout + r.stderr

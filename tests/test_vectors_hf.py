"""`fpt-ref vectors --hf`: the preset families' cases as Hugging Face checkpoint folders (docs/vectors.md,
"Hugging Face layout").

Which cases a config can express follows from docs/hf.md ("Refusals"): one MLP width, one head
count, one ``head_dim`` (``k = v``) for every layer, llama's ``hidden_size`` a multiple of the
heads, GPT-2's ``n_embd = n_head x head size``. The transformers tests (skipped without torch
or transformers) bound transformers' float64 logits by the agreement policy of docs/hf.md:
float32 for Llama and Qwen2 (their float32 norms, RoPE angles and softmax), float64 for GPT-2.
Measured on the tiny cases (seed 0): llama and qwen2 use 7e-4 to 2.2e-3 of the float32 bound
(max |diff| 4e-7 to 2.4e-6) and 2e5 to 6e5 times the float64 bound; gpt2 uses 3e-4 to 1.3e-3
of the float64 bound (max |diff| 4.6e-15).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import fpt_ref
import fpt_ref.hf as hf
from fpt_ref.tolerance import excess
from fpt_ref.vectors.cases import load_config
from fpt_ref.vectors.compare import compare, format_report
from fpt_ref.vectors.write import write_vectors

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "vectors.md")
#: the cases a Hugging Face config can express (tiny): worked out from docs/hf.md's refusals by hand
EXPRESSIBLE = {
    "llama": [
        "base",
        "hidden",
        "plan.1-mlp",
        "plan.2-add_heads",
        "plan.4-attention",
        "plan.5-hidden",
        "plan.6-add_layer",
    ],
    "qwen2": [
        "base",
        "hidden",
        "plan.1-mlp",
        "plan.2-add_heads",
        "plan.4-attention",
        "plan.5-hidden",
        "plan.6-add_layer",
    ],
    "gpt2": ["base", "plan.1-mlp", "plan.5-hidden", "plan.6-add_layer"],
}
#: why some cases cannot be expressed: (case, config field, part of the reason)
REASONS = [
    ("llama/mlp", "intermediate_size", "one MLP width p for every layer and head, got [16, 24]"),
    ("qwen2/add_heads", "num_attention_heads", "one head count for every layer and head, got [4, 5]"),
    ("llama/attention", "head_dim", "key size k=6 differs from value size v=4"),
    ("llama/plan.3-heads", "head_dim", "key size k=4 differs from value size v=6"),
    ("gpt2/hidden", "n_embd", "n_embd=12 must equal n_head x head size = 2 x 4"),
    ("gpt2/plan.2-add_heads", "n_embd", "n_embd=8 must equal n_head x head size = 3 x 4"),
    ("gpt2/plan.4-attention", "n_embd", "n_embd=8 must equal n_head x head size = 3 x 6"),
]
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}


@pytest.fixture(scope="module")
def hvec(tmp_path_factory):
    """The ``tiny`` vectors of every family with Hugging Face folders (seed 0); read-only."""
    root = tmp_path_factory.mktemp("vectors_hf")
    write_vectors(root, load_config("tiny"), seed=0, archs="all", hf=True)
    return root


def index(root):
    with open(root / "index.json") as f:
        return json.load(f)["cases"]


def manifest(root, name):
    with open(root / name / "manifest.json") as f:
        return json.load(f)


def hf_cases(root):
    return [c for c in index(root) if c["hf"]]


def test_folders_where_a_config_can_express_the_case_and_why_not_elsewhere(hvec):
    want = {f"{fam}/{c}" for fam, cases in EXPRESSIBLE.items() for c in cases}
    assert {c["case"] for c in hf_cases(hvec)} == want
    for c in index(hvec):
        m = manifest(hvec, c["case"])["hf"]
        folder = hvec / c["path"] / "hf"
        assert folder.is_dir() == (c["case"] in want) == (m["folder"] == "hf") == (m["reason"] is None), c["case"]
        assert c["hf"] == (f"{c['case']}/hf" if c["case"] in want else None)
        if c["arch"] == "paper":
            assert m == {
                "folder": None,
                "reason": "the paper's model (docs/spec.md section 1) has no Hugging Face architecture",
            }
            continue
        fam = c["case"].split("/")[0]
        assert m["model_type"] == MODEL_TYPES[fam] and m["dtype"] == "float64"
        assert m["base"] == f"{fam}/base/hf"
        assert m["parent"] == (f"{c['parent']}/hf" if c["parent"] in want else None)
        assert m["agreement"]["policy"] == ("float64" if fam == "gpt2" else "float32")
        if m["reason"]:  # the reason is fpt_ref.hf.check's message on the case's model
            with pytest.raises(ValueError) as err:
                hf.check(fpt_ref.load(hvec / c["path"] / "model.safetensors"), {"model_type": MODEL_TYPES[fam]})
            assert m["reason"] == str(err.value)
    for name, field, why in REASONS:
        reason = manifest(hvec, name)["hf"]["reason"]
        assert reason.startswith("model: ") and f"({field})" in reason and why in reason, (name, reason)


def test_folders_hold_the_case_model_exactly(hvec):
    """Read back with fpt_ref.hf: the same float64 tensors bit for bit, hence the case's reference outputs exactly."""
    for c in hf_cases(hvec):
        d = hvec / c["path"]
        ck = hf.read(hvec / c["hf"])
        model = fpt_ref.load(d / "model.safetensors")
        assert ck.stored_dtype == "float64" and ck.family == c["arch"]
        assert json.loads((hvec / c["hf"] / "config.json").read_text())["dtype"] == "float64"
        assert ck.model.arch == model.arch and ck.model.norm_eps == model.norm_eps and ck.model.s_max == model.s_max
        got, want = fpt_ref.named_tensors(ck.model), fpt_ref.named_tensors(model)
        assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want), c["case"]
        out = fpt_ref.forward(ck.model, load_file(d / "inputs.safetensors")["tokens"])
        assert np.array_equal(out, load_file(d / "outputs.safetensors")["output"]), c["case"]


def test_without_hf_the_same_files_and_no_folder(hvec, tmp_path):
    write_vectors(tmp_path, load_config("tiny"), seed=0, archs="gpt2")
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "gpt2").rglob("*") if p.is_file())
    assert files and not any("hf" in p.parts for p in files)
    for p in files:
        a, b = (tmp_path / p).read_bytes(), (hvec / p).read_bytes()
        if p.name != "manifest.json":
            assert a == b, p
            continue
        m = json.loads(b)
        m.pop("hf")
        m["files"].pop("hf", None)
        assert json.loads(a) == m, p
    assert all("hf" not in c for c in index(tmp_path))
    with pytest.raises(ValueError, match="^hf: expected True or False"):
        write_vectors(tmp_path / "x", load_config("tiny"), archs="gpt2", hf="yes")


# ---- against transformers ------------------------------------------------------------------


def hf_logits(folder, tokens):
    """transformers' float64 logits [b, s, V] of checkpoint ``folder`` (eager attention) on ``tokens`` [b, s]."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float64, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def used(m: dict, policy: str, ref, out) -> float:
    """The largest ``|out - ref| / (atol + rtol |ref|)`` under the case's ``policy`` output tolerance."""
    tol = m["tolerance"][policy]["output"]
    return float(np.max(excess(ref, out, tol["atol"], tol["rtol"])))


@pytest.fixture(scope="module")
def logits(hvec):
    """transformers' float64 logits of every folder on its case's tokens."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return {
        c["case"]: hf_logits(hvec / c["hf"], load_file(hvec / c["path"] / "inputs.safetensors")["tokens"])
        for c in hf_cases(hvec)
    }


def test_transformers_loads_every_folder_and_agrees_with_the_reference(hvec, logits):
    assert set(logits) == {c["case"] for c in hf_cases(hvec)}
    for c in hf_cases(hvec):
        m = manifest(hvec, c["case"])
        ref = load_file(hvec / c["path"] / "outputs.safetensors")["output"]
        out = logits[c["case"]]
        assert out.dtype == np.float64 and out.shape == ref.shape, c["case"]
        assert used(m, m["hf"]["agreement"]["policy"], ref, out) <= 1.0, c["case"]  # measured <= 2.2e-3
        if c["arch"] != "gpt2":  # the reason for the float32 policy: transformers' float32 islands
            assert used(m, "float64", ref, out) > 1.0, c["case"]  # measured 1.8e5 to 5.7e5


def _mutated(hvec, tmp_path, case, change):
    folder = tmp_path / case.replace("/", "_")
    folder.mkdir()
    src = hvec / case / "hf"
    (folder / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    config = json.loads((src / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "case, change",
    [
        ("llama/plan.4-attention", lambda c: c["rope_parameters"].update(rope_theta=10000.0)),  # theta not grown
        ("qwen2/plan.5-hidden", lambda c: c.update(rms_norm_eps=c["rms_norm_eps"] * 4)),  # eps not scaled by h/h^
        ("gpt2/plan.5-hidden", lambda c: c.update(layer_norm_epsilon=c["layer_norm_epsilon"] * 2)),
    ],
)
def test_a_wrong_config_fails_the_agreement(hvec, logits, tmp_path, case, change):
    m = manifest(hvec, case)
    tokens = load_file(hvec / case / "inputs.safetensors")["tokens"]
    ref = load_file(hvec / case / "outputs.safetensors")["output"]
    policy = m["hf"]["agreement"]["policy"]
    assert used(m, policy, ref, logits[case]) <= 1.0
    assert used(m, policy, ref, hf_logits(_mutated(hvec, tmp_path, case, change), tokens)) > 1.0


def test_compare_takes_transformers_logits_unchanged(hvec, logits, tmp_path):
    """``fpt-ref compare`` on an output-only file: llama's float64 logits as float32 (its agreement), gpt2's as float64."""
    for case, dtype in (("llama/plan.6-add_layer", np.float32), ("qwen2/plan.2-add_heads", np.float32)):
        path = tmp_path / "a.safetensors"
        save_file({"output": logits[case].astype(dtype)}, str(path))
        r = compare(hvec / case, path)
        assert r.ok, format_report(r)
    path = tmp_path / "gpt2.safetensors"
    save_file({"output": logits["gpt2/plan.6-add_layer"]}, str(path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-m", "fpt_ref", "compare", str(hvec / "gpt2" / "plan.6-add_layer"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _doc_blocks():
    """The ```python blocks of docs/vectors.md's "Hugging Face layout" section."""
    text = open(DOCS, encoding="utf-8").read()
    section = text.split("## Hugging Face layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


def test_the_documented_snippet_runs(hvec, logits, tmp_path, monkeypatch, capsys):
    blocks = _doc_blocks()
    assert blocks
    monkeypatch.chdir(tmp_path)
    os.symlink(hvec, tmp_path / "vectors")
    namespace = {"__name__": "__doc__"}
    for code in blocks:
        exec(compile(code, DOCS, "exec"), namespace)
    assert "agrees: True" in capsys.readouterr().out


def test_cli_hf(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "fpt_ref", "vectors", "--arch", "gpt2", "--hf", "-o", str(tmp_path / "v")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 13 cases" in r.stdout and "4 Hugging Face folders" in r.stdout
    assert sorted(c["case"] for c in hf_cases(tmp_path / "v")) == sorted(f"gpt2/{c}" for c in EXPRESSIBLE["gpt2"])

"""`fpt-ref vectors --arch`: the llama, qwen2 and gpt2 preset families (docs/vectors.md, "Real architectures").

The expectations come from docs/spec.md section 4 (the presets, the grouped-query mapping, the
RoPE key growth, LayerNorm mean padding) and are checked on the written files; the mutations
are implementations that get one block convention wrong.
"""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import fpt_ref
from fpt_ref.blocks import PRESETS
from fpt_ref.forward import trace
from fpt_ref.model import from_tensors, to_tensors
from fpt_ref.tolerance import preservation_scale, tolerance_abs
from fpt_ref.vectors.cases import ALL_FAMILIES, ARCH_FAMILIES, FAMILIES, families, load_config, parse_archs
from fpt_ref.vectors.compare import compare, format_report
from fpt_ref.vectors.write import write_vectors

EXPANSIONS = ("mlp", "add_heads", "heads", "attention", "hidden", "add_layer")
ARCHS = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="module")
def avec(tmp_path_factory):
    """The ``tiny`` vectors of the three preset families (seed 0); read-only."""
    root = tmp_path_factory.mktemp("vectors_arch")
    write_vectors(root, load_config("tiny"), seed=0, archs=ARCHS)
    return root


def index(root):
    with open(root / "index.json") as f:
        return json.load(f)


def manifest(root, name):
    with open(root / name / "manifest.json") as f:
        return json.load(f)


def inputs(case_dir):
    return load_file(case_dir / "inputs.safetensors")["tokens"]


def run(model, x):
    """The tensors an implementation writes: ``output`` and every residual stream (float64)."""
    tr = trace(model, x)
    return {"output": np.asarray(tr.output), **{f"residual.{n}": np.asarray(r) for n, r in enumerate(tr.streams)}}


def save(path, tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def test_selection_of_families():
    assert parse_archs("gpt2, llama") == ("llama", "gpt2")
    assert families() == FAMILIES and families("all") == ALL_FAMILIES
    assert [f.arch for f in families("llama,qwen2,gpt2")] == list(ARCHS)
    for bad in ("", "bert", ["paper", "gpt3"]):
        with pytest.raises(ValueError, match="^archs: expected some of paper, llama, qwen2, gpt2 or all"):
            parse_archs(bad)


def test_every_family_has_the_six_expansions_and_the_plan(avec):
    idx = index(avec)
    assert idx["archs"] == list(ARCHS) and len(idx["cases"]) == 3 * 13
    for fam in ARCH_FAMILIES:
        cases = [c for c in idx["cases"] if c["case"].startswith(f"{fam.name}/")]
        assert {c["arch"] for c in cases} == {fam.arch}
        assert [c["case"].split("/")[1] for c in cases[:7]] == ["base", *EXPANSIONS]
        assert all(
            c["parent"] == f"{fam.name}/base" and c["step"].split()[0] == c["case"].split("/")[1] for c in cases[1:7]
        )
        plan = cases[7:]
        assert [c["step"].split()[0] for c in plan] == list(EXPANSIONS)
        assert [c["parent"] for c in plan] == [f"{fam.name}/base"] + [c["case"] for c in plan[:-1]]


def test_manifest_names_the_architecture_and_the_file_holds_it(avec):
    for c in index(avec)["cases"]:
        m = manifest(avec, c["case"])
        model = fpt_ref.load(avec / c["path"] / "model.safetensors")
        preset = PRESETS[c["arch"]]
        assert m["model"]["preset"] == c["arch"]
        assert m["model"]["arch"] == model.arch.to_dict()
        # every field but RoPE's base is the preset's; theta changes only with RoPE key growth
        assert dataclasses.replace(model.arch, rope_theta=preset.rope_theta) == preset
        assert m["model"]["needs"] and isinstance(m["model"]["conventions"], dict)
    base = {a: fpt_ref.load(avec / a / "base" / "model.safetensors") for a in ARCHS}
    names = {a: set(load_file(avec / a / "base" / "model.safetensors")) for a in ARCHS}
    # llama: grouped-query everywhere (kv_heads = E/2), RoPE (no pos), no biases, untied
    assert [(L.E, L.G) for L in base["llama"].layers] == [(4, 2), (4, 2)]
    assert "pos" not in names["llama"] and "w_out" in names["llama"] and "final_norm" in names["llama"]
    assert not any(n.endswith(("b_q", "b_k", "b_v", "b_l1", "b_l2")) for n in names["llama"])
    assert "layers.0.w_gate" in names["llama"] and "layers.0.heads.1.w_k" not in names["llama"]
    assert base["llama"].layers[0].heads[0].k % 2 == 0
    # qwen2: multi-query layers (one key/value head each, uniform for a Hugging Face config),
    # q/k/v biases (k and v once per group)
    assert [(L.E, L.G) for L in base["qwen2"].layers] == [(4, 1), (4, 1)]
    assert {"layers.1.heads.3.b_q", "layers.0.heads.0.b_k", "layers.1.heads.0.b_v"} <= names["qwen2"]
    assert "layers.1.heads.2.b_k" not in names["qwen2"]
    # gpt2: LayerNorm biases, learned positions, tied output (o = vocab, no w_out), every bias
    g = base["gpt2"]
    assert (
        "w_out" not in names["gpt2"] and {"pos", "final_norm_b", "layers.1.norm_mlp_b", "layers.1.b_o"} <= names["gpt2"]
    )
    assert g.o == g.vocab and not any(L.grouped for L in g.layers)
    assert manifest(avec, "gpt2/base")["model"]["conventions"]["output"].endswith(
        "embed^T (tied; the file has no w_out)"
    )


def test_round_trip_is_bit_exact(avec):
    for c in index(avec)["cases"]:
        d = avec / c["path"]
        model = fpt_ref.load(d / "model.safetensors")
        out = load_file(d / "outputs.safetensors")
        got = run(model, inputs(d))
        assert set(got) == set(out) and all(np.array_equal(got[k], out[k]) for k in out), c["case"]


def test_every_expanded_case_preserves_its_base(avec):
    """Each case's output equals its root's and its parent's within verify's preservation tolerance."""
    for fam in ARCH_FAMILIES:
        root = avec / fam.name / "base"
        x = inputs(root)
        root_model = fpt_ref.load(root / "model.safetensors")
        out_root = load_file(root / "outputs.safetensors")["output"]
        scale = preservation_scale(root_model, trace(root_model, x))
        for c in (c for c in index(avec)["cases"] if c["case"].startswith(f"{fam.name}/") and c["parent"]):
            d = avec / c["path"]
            model = fpt_ref.load(d / "model.safetensors")
            out = load_file(d / "outputs.safetensors")["output"]
            err = float(np.max(np.abs(out - out_root)))
            assert err <= tolerance_abs(root_model, model, x.shape[1], scale), (c["case"], err)
            assert manifest(avec, c["case"])["preservation"]["vs_root"]["max_abs"] == err
            parent = avec / c["parent"]
            pm = fpt_ref.load(parent / "model.safetensors")
            pscale = preservation_scale(pm, trace(pm, x))
            perr = float(np.max(np.abs(out - load_file(parent / "outputs.safetensors")["output"])))
            assert perr <= tolerance_abs(pm, model, x.shape[1], pscale), (c["case"], perr)


def _block(arr, index):
    return arr[tuple(slice(a, b) for a, b in index)]


def test_manifest_blocks_match_the_files(avec):
    """Zero blocks are zero; copied and scaled blocks come from the parent (same place; RoPE below);
    mean blocks are the row means of the parent's columns (LayerNorm mean padding)."""
    n_mean = 0
    for c in index(avec)["cases"]:
        m = manifest(avec, c["case"])
        if m["kind"] == "base":
            continue
        op = m["step"].split()[0]
        t = load_file(avec / c["path"] / "model.safetensors")
        parent = load_file(avec / m["parent"] / "model.safetensors")
        rope_attention = op == "attention" and m["model"]["arch"]["positions"] == "rope"
        for b in m["blocks"]:
            assert b["role"] in ("copied", "scaled", "zero", "free", "mean"), (c["case"], b)
            blk = _block(t[b["tensor"]], b["index"])
            if b["role"] == "zero":
                assert not np.any(blk), (c["case"], b)
            elif b["role"] in ("copied", "scaled") and op != "add_layer" and not rope_attention:
                old = _block(parent[b["tensor"]], b["index"])
                assert np.array_equal(blk, old if b["role"] == "copied" else old * b["factor"]), (c["case"], b)
            elif b["role"] == "mean":
                old = parent[b["tensor"]]
                mean = old.mean(axis=-1, keepdims=True) if old.ndim == 2 else np.full(1, old.mean())
                want = np.broadcast_to(mean, blk.shape)
                assert np.allclose(blk, want, rtol=0, atol=1e-15 * max(1.0, np.abs(old).max())), (c["case"], b)
                n_mean += 1
    assert n_mean > 0  # gpt2's hidden expansions mean-pad


def _roles(m, role):
    return {b["tensor"] for b in m["blocks"] if b["role"] == role}


def test_grouped_head_addition_keeps_the_groups(avec):
    """docs/spec.md section 4.2: one new query head at the end of each group, or whole new groups."""
    m = manifest(avec, "llama/add_heads")  # layer 1: E=4 in 2 groups -> 6 in 2 groups of 3
    assert m["model"]["dims"]["layers"][1]["kv_heads"] == 2 and len(m["model"]["dims"]["layers"][1]["heads"]) == 6
    assert _roles(m, "zero") == {"layers.1.heads.2.w_o", "layers.1.heads.5.w_o"}  # the last head of each group
    t, p = (load_file(avec / n / "model.safetensors") for n in ("llama/add_heads", "llama/base"))
    for new, old in ((0, 0), (1, 1), (3, 2), (4, 3)):  # old query heads keep their group
        assert np.array_equal(t[f"layers.1.heads.{new}.w_q"], p[f"layers.1.heads.{old}.w_q"])
    assert np.array_equal(t["layers.1.heads.3.w_k"], p["layers.1.heads.2.w_k"])  # group 1's keys
    m = manifest(avec, "qwen2/add_heads")  # the multi-query layer gains one query head
    assert m["model"]["dims"]["layers"][1]["kv_heads"] == 1 and _roles(m, "zero") == {"layers.1.heads.4.w_o"}
    m = manifest(
        avec, "qwen2/plan.2-add_heads"
    )  # a whole new group in every layer: one key/value head, four query heads
    for L in m["model"]["dims"]["layers"]:
        assert (L["kv_heads"], len(L["heads"])) == (2, 8)
    assert _roles(m, "zero") == {f"layers.{n}.heads.{e}.w_o" for n in (0, 1) for e in range(4, 8)}
    m = manifest(avec, "llama/plan.2-add_heads")  # the groups doubled: 2 groups of 2 -> 4 groups of 2
    assert all((L["kv_heads"], len(L["heads"])) == (4, 8) for L in m["model"]["dims"]["layers"])
    assert _roles(m, "zero") == {f"layers.{n}.heads.{e}.w_o" for n in (0, 1) for e in range(4, 8)}


def test_rope_key_growth_keeps_every_pair(avec):
    """``half`` layout, k = 4 -> 6: old dims 0, 1 stay, old 2, 3 move to 3, 4, the new 2 and 5 are zero;
    W_K and b_k are scaled by sqrt(6/4) and theta becomes theta^(6/4)."""
    for fam in ("llama", "qwen2"):
        m = manifest(avec, f"{fam}/attention")
        base = manifest(avec, f"{fam}/base")["model"]["arch"]["rope_theta"]
        assert m["model"]["arch"]["rope_theta"] == pytest.approx(base**1.5, rel=1e-15)
        t, p = (load_file(avec / fam / n / "model.safetensors") for n in ("attention", "base"))
        f = math.sqrt(6 / 4)
        kinds = ("w_k", "b_k") if fam == "qwen2" else ("w_k",)
        n_checked = 0
        for name, old in p.items():
            if name.split(".")[-1] not in kinds:
                continue
            new = t[name]
            assert new.shape[-1] == 6 and not np.any(new[..., [2, 5]])
            assert np.allclose(new[..., [0, 1, 3, 4]], old * f, rtol=1e-15, atol=0)
            n_checked += 1
        assert n_checked == 4  # every key/value head of every layer (llama: 2 + 2; qwen2: 1 + 1, w_k and b_k)


def test_compare_accepts_the_reference_in_float64_and_float32(avec, tmp_path):
    for c in index(avec)["cases"]:
        d = avec / c["path"]
        ref = load_file(d / "outputs.safetensors")
        r = compare(d, save(tmp_path / "a.safetensors", ref), require_residuals=True)
        assert r.ok and r.architecture and c["arch"] in r.architecture, c["case"]
        r = compare(d, save(tmp_path / "b.safetensors", {k: v.astype(np.float32) for k, v in ref.items()}))
        assert r.ok, (c["case"], format_report(r))


def _gqa_modulo(model):
    """An implementation mapping query head j to key/value head j mod kv_heads (not floor(j / r))."""
    t = dict(to_tensors(model))
    for n, layer in enumerate(model.layers):
        G, r = layer.G, layer.group_size
        wrong = [(j % G) * r + j // G for j in range(layer.E)]  # the query head reading what j should read
        for kind in ("w_q", "w_o", "b_q"):
            src = {j: t.get(f"layers.{n}.heads.{j}.{kind}") for j in range(layer.E)}
            for j in range(layer.E):
                if src[j] is not None:
                    t[f"layers.{n}.heads.{wrong[j]}.{kind}"] = src[j]
    return from_tensors(t, model.norm_eps, model.causal, arch=model.arch, max_seq=model.max_seq)


def _zero(model, kinds):
    t = {k: (np.zeros_like(v) if k.split(".")[-1] in kinds else v) for k, v in to_tensors(model).items()}
    return from_tensors(t, model.norm_eps, model.causal, arch=model.arch, max_seq=model.max_seq)


MUTATIONS = {
    "rope interleaved instead of half": (
        "llama/plan.4-attention",
        lambda m: dataclasses.replace(m, arch=m.arch.replace(rope_layout="interleaved")),
        "rope",
    ),
    "rope base theta not grown": (
        "qwen2/attention",
        lambda m: dataclasses.replace(m, arch=m.arch.replace(rope_theta=1e4)),
        "rope",
    ),
    "grouped-query mapping j mod kv_heads": ("llama/add_heads", _gqa_modulo, "grouped_query"),
    "key bias dropped": ("qwen2/base", lambda m: _zero(m, ("b_k",)), "biases"),
    "LayerNorm bias dropped": ("gpt2/hidden", lambda m: _zero(m, ("norm_mha_b",)), "norm"),
}


@pytest.mark.parametrize("label", list(MUTATIONS))
def test_compare_rejects_a_wrong_block_convention(avec, tmp_path, label):
    name, mutate, key = MUTATIONS[label]
    d = avec / name
    model = fpt_ref.load(d / "model.safetensors")
    wrong = run(mutate(model), inputs(d))
    for dtype in (np.float64, np.float32):
        r = compare(d, save(tmp_path / "a.safetensors", {k: v.astype(dtype) for k, v in wrong.items()}))
        assert not r.ok and r.first_failing_residual == "residual.1", (label, format_report(r))
        assert max(t.used for t in r.tensors if t.used is not None) > (1e6 if dtype == np.float64 else 10)
        text = format_report(r)
        assert "this case is not the paper's model" in text and f"{key}: " in text.split("not the paper's model")[1]


def test_output_only_failure_on_a_tied_case_points_at_the_tied_output(avec, tmp_path):
    """An untied paper-model implementation (random W_out, no final norm) fails at the output only."""
    d = avec / "gpt2" / "base"
    ref = load_file(d / "outputs.safetensors")
    model = fpt_ref.load(d / "model.safetensors")
    wrong = dict(
        ref, output=np.asarray(trace(model, inputs(d)).streams[-1]) @ np.asarray(model.embed).T
    )  # no final norm
    r = compare(d, save(tmp_path / "a.safetensors", wrong))
    assert [t.status for t in r.tensors] == ["pass", "pass", "pass", "fail"]
    text = format_report(r)
    assert "look at W_out" in text and "Norm_f(residual.N) @ embed^T (tied" in text
    d_json = json.loads(json.dumps(r.to_dict()))  # --json carries the same explanation
    assert "gpt2 preset" in d_json["architecture"] and d_json["conventions"]["output"].startswith("Norm_f")
    r = compare(d, save(tmp_path / "b.safetensors", {"output": ref["output"][..., :6].copy()}))  # o = 6, not vocab
    assert r.tensors[-1].status == "shape" and "tied" in format_report(r)


def test_paper_cases_name_the_paper_model(vec, tmp_path):
    m = manifest(vec, "tok-causal-eps/base")
    assert m["model"]["preset"] == "paper" and m["model"]["arch"] == PRESETS["paper"].to_dict()
    r = compare(
        vec / "tok-causal-eps" / "base",
        save(tmp_path / "a.safetensors", load_file(vec / "tok-causal-eps" / "base" / "outputs.safetensors")),
    )
    assert r.ok and r.architecture is None and "architecture" not in format_report(r)


def _hashes(root, fam):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / fam).rglob("*"))
        if p.is_file()
    }


def test_families_are_deterministic_and_independent_of_the_selection(avec, tmp_path):
    write_vectors(tmp_path / "again", load_config("tiny"), seed=0, archs="qwen2")
    assert _hashes(tmp_path / "again", "qwen2") == _hashes(avec, "qwen2")  # same bytes, alone or with others
    assert len(_hashes(avec, "qwen2")) == 13 * 6
    write_vectors(tmp_path / "other", load_config("tiny"), seed=1, archs="qwen2")
    a, b = (load_file(r / "qwen2" / "plan.6-add_layer" / "outputs.safetensors") for r in (avec, tmp_path / "other"))
    assert not np.array_equal(a["output"], b["output"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fpt_ref", *args], capture_output=True, text=True, timeout=120)


def test_cli_arch(tmp_path):
    r = _cli("vectors", "--arch", "gpt2", "--seed", "2", "-o", str(tmp_path / "v"))
    assert r.returncode == 0 and "wrote 13 cases (tiny config, seed 2, gpt2)" in r.stdout, r.stderr
    assert manifest(tmp_path / "v", "gpt2/hidden")["model"]["preset"] == "gpt2"
    r = _cli("vectors", "--arch", "bert", "-o", str(tmp_path / "w"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fpt-ref vectors: argument --arch: expected some of paper, llama, qwen2, gpt2 or all, got 'bert'"
    ]
    assert not (tmp_path / "w").exists()


# ---- an implementation from the documented conventions alone (docs/vectors.md, "Real architectures") ----


def _independent(case_dir, dtype):
    """``output`` and ``residual.{n}`` of a case, from its files and the conventions of docs/vectors.md only.

    Reads ``model.safetensors`` (tensors and the ``arch`` metadata) and ``inputs.safetensors``;
    shares no code with fpt_ref. Loops over layers and heads.
    """
    from safetensors import safe_open

    path = str(case_dir / "model.safetensors")
    with safe_open(path, "numpy") as f:
        meta = f.metadata()
    a = json.loads(meta["arch"])
    eps, causal = float(meta["norm_eps"]), meta["causal"] == "true"
    t = {k: v.astype(dtype) for k, v in load_file(path).items()}
    x = inputs(case_dir)
    s = x.shape[1]

    def norm(X, pre):
        if a["norm"] == "layer":
            Xc = X - X.mean(-1, keepdims=True)
            return t[pre] * Xc / np.sqrt((Xc * Xc).mean(-1, keepdims=True) + eps) + t[pre + "_b"]
        return t[pre] * X / np.sqrt((X * X).mean(-1, keepdims=True) + eps)

    def act(z):
        if a["act"] == "silu":
            return z / (1 + np.exp(-z))
        if a["act"] == "gelu_tanh":
            return (
                0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
            )  # Python floats keep z's dtype
        return np.maximum(z, 0)

    def rotate(z):  # [b, s, k]
        k = z.shape[-1]
        ang = np.arange(s)[:, None] * a["rope_theta"] ** (-2.0 * np.arange(k // 2) / k)  # [s, k/2], float64
        cos, sin = np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)
        if a["rope_layout"] == "half":
            i, j = np.arange(k // 2), np.arange(k // 2) + k // 2
        else:
            i, j = np.arange(0, k, 2), np.arange(1, k, 2)
        out = np.empty_like(z)
        out[..., i] = z[..., i] * cos - z[..., j] * sin
        out[..., j] = z[..., j] * cos + z[..., i] * sin
        return out

    def b(name, shape):
        return t.get(name, np.zeros(shape, dtype))

    X = t["embed"][x]  # [b, s, h]
    if a["positions"] == "learned":
        X = X + t["pos"][:s]
    res = {"residual.0": X}
    n = 0
    while f"layers.{n}.norm_mha" in t:
        pre = f"layers.{n}"
        E = sum(1 for k in t if k.startswith(pre + ".heads.") and k.endswith(".w_q"))
        G = sum(1 for k in t if k.startswith(pre + ".heads.") and k.endswith(".w_k"))
        r = E // G
        A = norm(X, pre + ".norm_mha")
        mha = b(pre + ".b_o", X.shape[-1])
        for j in range(E):
            hq, hk = f"{pre}.heads.{j}", f"{pre}.heads.{(j // r) * r}"  # query head j reads group j // r
            q = A @ t[hq + ".w_q"] + b(hq + ".b_q", t[hq + ".w_q"].shape[1])
            k = A @ t[hk + ".w_k"] + b(hk + ".b_k", t[hk + ".w_k"].shape[1])
            v = A @ t[hk + ".w_v"] + b(hk + ".b_v", t[hk + ".w_v"].shape[1])
            if a["positions"] == "rope":
                q, k = rotate(q), rotate(k)
            logits = q @ k.transpose(0, 2, 1) / np.sqrt(dtype(q.shape[-1]))  # [b, s, s]
            if causal:
                logits = np.where(np.tril(np.ones((s, s), bool)), logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            mha = mha + (w / w.sum(-1, keepdims=True)) @ v @ t[hq + ".w_o"]
        X = X + mha
        M = norm(X, pre + ".norm_mlp")
        p = t[pre + ".w_l1"].shape[1]
        up = M @ t[pre + ".w_l1"] + b(pre + ".b_l1", p)
        hidden = act(M @ t[pre + ".w_gate"] + b(pre + ".b_gate", p)) * up if a["mlp"] == "gated" else act(up)
        X = X + hidden @ t[pre + ".w_l2"] + b(pre + ".b_l2", X.shape[-1])
        n += 1
        res[f"residual.{n}"] = X
    Y = norm(X, "final_norm") if a["final_norm"] else X
    res["output"] = Y @ (t["embed"].T if a["tied"] else t["w_out"])
    return res


def test_an_implementation_of_the_documented_conventions_passes_every_case(avec, tmp_path):
    worst = {}
    for c in index(avec)["cases"]:
        d = avec / c["path"]
        for dtype in (np.float64, np.float32):
            out = _independent(d, dtype)
            assert all(v.dtype == dtype for v in out.values())
            r = compare(d, save(tmp_path / "a.safetensors", out), require_residuals=True)
            assert r.ok, (c["case"], dtype, format_report(r))
            worst[dtype] = max(worst.get(dtype, 0.0), max(t.used for t in r.tensors if t.name != "residual.0"))
    assert 0 < worst[np.float64] < 1 and 0 < worst[np.float32] < 1


def test_no_float32_argmax_near_ties(avec):
    for c in index(avec)["cases"]:
        m = manifest(avec, c["case"])
        assert m["argmax"]["near_ties_float32"] == [] and m["argmax"]["near_ties_float64"] == [], c["case"]

"""Writing fpt_ref models as Hugging Face checkpoint folders (fpt_ref.hf.save, docs/hf.md).

Round trips through transformers (skipped without it): a loaded checkpoint written back
holds the same bits and gives transformers' logits bit for bit; a checkpoint grown by the
six-step plan loads in ``transformers.AutoModelForCausalLM`` with the base's logits (under
the preservation policy, transformers' float32 steps made float64 as in test_hf_load.py).
Refusals of models a config cannot express need no torch.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_hf_load import CASES, LLAMA, all_ids, float64_islands, hf_logits, make_checkpoint

import fpt_ref
import fpt_ref.hf as hf
from fpt_ref.hf.files import Tensors, bf16_to_float32, to_bf16_bits
from fpt_ref.plan import parse_plan, plan_dims
from fpt_ref.tolerance import preservation_scale, tolerance_abs

GPT2 = {"model_type": "gpt2", "n_embd": 16, "n_head": 4, "n_layer": 2, "n_positions": 16, "vocab_size": 32}


def _model(arch="llama", **kw):
    args = dict(h=16, p=24, n_heads=4, k=4, v=4, n_layers=2, vocab=32, out_dim=32, max_seq=16, eps=1e-6, causal=True)
    args.update(kw)
    return fpt_ref.init_model(arch=arch, **args)


@pytest.mark.parametrize(
    "arch, kw, like, field",
    [
        ("llama", {"p": [24, 32]}, LLAMA, "intermediate_size"),
        ("llama", {"n_heads": [2, 4]}, LLAMA, "num_attention_heads"),
        ("llama", {"kv_heads": [2, 1]}, LLAMA, "num_key_value_heads"),
        ("llama", {"k": 8, "v": 4}, LLAMA, "head_dim"),
        ("llama", {"n_heads": 3, "kv_heads": 1}, LLAMA, "multiple of the 3 heads"),
        ("llama", {"k": [4, 8], "v": [4, 8]}, LLAMA, "head_dim"),
        ("llama", {"out_dim": 10}, LLAMA, "vocab_size"),
        ("qwen2", {}, LLAMA, "attention_bias"),
        ("qwen2", {}, dict(LLAMA, model_type="mistral"), "attention_bias"),
        ("gpt2", {}, LLAMA, "rms_norm_eps"),
        ("gpt2", {"n_heads": 2}, GPT2, "n_embd"),
        ("gpt2", {"kv_heads": 2}, GPT2, "n_head"),
        ("llama", {}, GPT2, "layer_norm_epsilon"),
        ("llama", {}, dict(LLAMA, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
    ],
)
def test_inexpressible_models_are_refused_before_writing(tmp_path, arch, kw, like, field):
    model = _model(arch, **kw)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^(model|config): ") as err:
        hf.save(model, out, like=like)
    assert field in str(err.value)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_plan_refused_from_dims_alone():
    model = _model()
    hf.check_dims(fpt_ref.dims(model), model.arch, model.causal, LLAMA)
    end = plan_dims(model, parse_plan("mlp p=40 layers=0"))[-1]
    with pytest.raises(ValueError, match="intermediate_size"):
        hf.check_dims(end, model.arch, model.causal, LLAMA)
    end = plan_dims(model, parse_plan("heads v=8"))[-1]
    with pytest.raises(ValueError, match="head_dim.*k=4 differs from value size v=8"):
        hf.check_dims(end, model.arch, model.causal, LLAMA)


def test_out_dir_rules(tmp_path):
    model = _model()
    out = tmp_path / "out"
    hf.save(model, out, like=LLAMA, dtype="float64")
    first = sorted(os.listdir(out))
    assert first == ["config.json", "model.safetensors"]
    hf.save(model, out, like=LLAMA, dtype="float64")  # our own earlier output: replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="^out_dir: "):
        hf.save(model, foreign, like=LLAMA)
    assert os.listdir(foreign) == ["notes.txt"]
    with pytest.raises(ValueError, match="^dtype: "):
        hf.save(model, tmp_path / "x", like=LLAMA, dtype="int8")
    back = hf.load(out)
    assert all(np.array_equal(a, fpt_ref.named_tensors(back)[n]) for n, a in fpt_ref.named_tensors(model).items())


def test_older_config_fields_are_kept_consistent(tmp_path):
    """A transformers 4 style config (top-level rope_theta, torch_dtype) after key growth."""
    model = fpt_ref.run_plan(_model(), "heads v=8; attention k=8", check=False)[-1].model
    like = dict(LLAMA, rope_theta=500.0, torch_dtype="bfloat16", layer_types=["full_attention"])
    out = hf.save(model, tmp_path / "o", like=like)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["rope_theta"] == model.arch.rope_theta == 10000.0**2 and "rope_parameters" not in cfg
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16" and Tensors(out).stored_dtype() == "BF16"
    assert (cfg["head_dim"], cfg["num_hidden_layers"], cfg["layer_types"]) == (8, 2, ["full_attention"] * 2)


def test_bf16_writer_matches_the_rounding(tmp_path):
    model = _model()
    hf.save(model, tmp_path / "b", like=LLAMA, dtype="bfloat16")
    t = Tensors(tmp_path / "b")
    assert t.stored_dtype() == "BF16"
    w = model.layers[0].w_l1  # [h, p]; up_proj.weight is its transpose
    assert np.array_equal(t.get("model.layers.0.mlp.up_proj.weight"), bf16_to_float32(to_bf16_bits(w.T)))


# ---- through transformers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hfx")
    names = ("llama_gqa_untied", "qwen2_tied", "gpt2")
    out = {name: make_checkpoint(str(root / name), CASES[name][0], **CASES[name][1]) for name in names}
    cfg = CASES["llama_gqa_untied"][1]
    out["llama_bf16"] = make_checkpoint(str(root / "llama_bf16"), "llama", dtype="bfloat16", **cfg)
    return out


def _file_tensors(folder) -> dict:
    t = Tensors(folder)
    return {name: t.get(name) for name in t.names()}


@pytest.mark.parametrize("case", ["llama_gqa_untied", "qwen2_tied", "gpt2", "llama_bf16"])
def test_untouched_round_trip_is_bit_exact(bases, tmp_path, case):
    base = bases[case]
    ck = hf.read(base)
    out = hf.save(ck.model, tmp_path / "out", like=base, shard_bytes=4096 if case == "gpt2" else None)
    if case == "gpt2":
        assert "model.safetensors.index.json" in os.listdir(out) and len(os.listdir(out)) > 3
    assert Tensors(out).stored_dtype() == Tensors(base).stored_dtype()
    a, b = _file_tensors(base), _file_tensors(out)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a)
    cfg_a, cfg_b = (json.load(open(os.path.join(f, "config.json"))) for f in (base, out))
    changed = {k for k in cfg_a if cfg_a[k] != cfg_b.get(k)}
    assert changed <= {"head_dim"}, changed  # qwen2 gains an explicit head_dim; nothing else moves
    assert os.path.exists(os.path.join(out, "generation_config.json"))
    ids = all_ids(ck.model.vocab, ck.model.s_max)
    np.testing.assert_array_equal(hf_logits(out, ids), hf_logits(base, ids))


GROW = {
    # head_dim 8 -> 32 (W_K x 2), hidden 32 -> 128 (gains x 1/2, eps x 1/4): exact in every dtype
    "llama_gqa_untied": "mlp p=64; add_heads count=4; heads v=32; attention k=32; hidden h=128; add_layer at=1",
    "qwen2_tied": "mlp p=64; add_heads count=4; heads v=32; attention k=32; hidden h=128; add_layer at=1",
    "llama_bf16": "mlp p=64; add_heads count=4; heads v=32; attention k=32; hidden h=128; add_layer at=1",
    # n_embd = n_head x head size: 8 x 16 = 128
    "gpt2": "mlp p=160; add_heads count=4; heads v=16; attention k=16; hidden h=128; add_layer at=1",
}


@pytest.mark.parametrize("case", list(GROW))
def test_grown_checkpoint_loads_in_transformers_with_the_base_logits(bases, tmp_path, monkeypatch, case):
    base = bases[case]
    ck = hf.read(base)
    grown = fpt_ref.run_plan(ck.model, GROW[case], check=False)[-1].model
    # GPT-2's LayerNorm growth writes row means and sqrt(2) scalings: float32 would round them
    dtype = "float64" if case == "gpt2" else None
    out = hf.save(grown, tmp_path / "out", like=base, dtype=dtype)
    cfg = json.load(open(os.path.join(out, "config.json")))
    if case == "gpt2":
        assert (cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["n_inner"]) == (128, 8, 3, 160)
    else:
        sizes = [cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")]
        assert sizes + [cfg["head_dim"], cfg["num_hidden_layers"]] == [128, 64, 8, 2, 32, 3]
        assert cfg["rope_parameters"]["rope_theta"] == 10000.0**4 and cfg["rms_norm_eps"] == ck.model.norm_eps / 4
        assert cfg.get("layer_types", ["full_attention"] * 3) == ["full_attention"] * 3
        assert cfg["dtype"] == ck.stored_dtype
        # every scaled block is exact in the stored dtype: the file holds the grown model's
        # copies and scalings bit for bit (free blocks rounded once)
        stored = hf.load(out)
        rounded = fpt_ref.convert(grown, dtype=np.float32)
        if ck.stored_dtype == "bfloat16":
            old_k = ck.model.layers[0].heads[0].w_k  # [32, 8]; its first half went to columns 0..3
            assert np.array_equal(stored.layers[0].heads[0].w_k[:32, :4], 2 * old_k[:, :4])  # x sqrt(32/8)
            assert np.array_equal(stored.layers[0].norm_mha[:32], ck.model.layers[0].norm_mha / 2)  # x sqrt(32/128)
        else:
            for name, a in fpt_ref.named_tensors(rounded).items():
                assert np.array_equal(fpt_ref.named_tensors(stored)[name], a), name
    float64_islands(monkeypatch, ck.family)
    ids = all_ids(ck.model.vocab, ck.model.s_max)
    before, after = hf_logits(base, ids), hf_logits(out, ids)
    grown_stored = hf.load(out)
    tr = fpt_ref.trace(ck.model, ids)
    tol = tolerance_abs(ck.model, grown_stored, ids.shape[1], preservation_scale(ck.model, tr))
    assert float(np.max(np.abs(after - before))) <= tol  # measured: 0 (llama, qwen2, bf16), 1.4e-14 (gpt2)
    if case == "llama_gqa_untied":  # mutation: the config keeps the old RoPE base
        cfg["rope_parameters"]["rope_theta"] = 10000.0
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(cfg, f)
        assert float(np.max(np.abs(hf_logits(out, ids) - before))) > tol


def test_bf16_scalings_that_are_not_powers_of_two_round(bases, tmp_path):
    """head_dim 8 -> 16 scales W_K by sqrt(2): bfloat16 cannot hold the products exactly."""
    ck = hf.read(bases["llama_bf16"])
    grown = fpt_ref.run_plan(ck.model, "heads v=16; attention k=16", check=False)[-1].model
    out = hf.save(grown, tmp_path / "out", like=bases["llama_bf16"])
    stored = hf.load(out).layers[0].heads[0].w_k
    exact = grown.layers[0].heads[0].w_k  # [h, 16]
    diff = np.abs(stored - exact)
    assert np.any(diff > 0) and np.all(diff <= 2.0**-8 * np.abs(exact))  # u = 2^-8: 8 significant bits


def test_expand_refuses_before_any_step(tmp_path, monkeypatch):
    base = hf.save(_model(), tmp_path / "base", like=LLAMA, dtype="float64")

    def no_run(*args, **kwargs):
        raise AssertionError("a step ran")

    monkeypatch.setattr(fpt_ref.plan, "run_plan", no_run)
    for plan, field in (("mlp p=40 layers=0", "intermediate_size"), ("heads v=8", "head_dim")):
        with pytest.raises(ValueError, match=field):
            hf.expand(base, plan, tmp_path / "out")
    with pytest.raises(ValueError, match="^dtype: "):
        hf.expand(base, "mlp p=40", tmp_path / "out", dtype="int4")
    assert not (tmp_path / "out").exists()


def test_expand_grows_and_writes_a_verified_folder(tmp_path):
    base = hf.save(_model(eps=1e-5), tmp_path / "base", like=LLAMA, dtype="float64")
    plan = "mlp p=32; add_heads count=4; heads v=8; attention k=8; hidden h=32; add_layer at=1"
    results = hf.expand(base, plan, tmp_path / "out")
    assert len(results) == 6 and all(r.error["ok"] for r in results)
    grown = hf.load(tmp_path / "out")
    want = results[-1].model
    assert fpt_ref.dims(grown) == fpt_ref.dims(want) and grown.arch == want.arch and grown.norm_eps == want.norm_eps
    assert all(np.array_equal(a, fpt_ref.named_tensors(grown)[n]) for n, a in fpt_ref.named_tensors(want).items())

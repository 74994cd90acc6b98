"""Reading Hugging Face checkpoint folders (fpt_ref.hf, docs/hf.md).

Tiny random checkpoints are made with transformers at test time (skipped without it); the
bfloat16 reader and the config refusals need neither torch nor transformers.

Measured agreement of ``fpt_ref.forward`` with transformers' float64 logits (these tests'
checkpoints: h=32, 2 layers, vocab 64, 16 positions, every token id and position; docs/hf.md):

- transformers as it is (float32 norms, RoPE angles and softmax inside its float64 model):
  max |diff| 8.0e-6 to 1.4e-5, i.e. 6e-8 to 1e-7 of the natural output scale ``S`` (llama,
  mistral, qwen2). Bound: the agreement policy for float32 (:func:`fpt_ref.tolerances`),
  since those float32 steps err no more than a float32 implementation would.
- with those three steps made float64 (:func:`float64_islands`): 0.9 to 2.8 ulps of ``S``;
  GPT-2 as it is (float64 throughout): 0.5 ulps. Bound: the agreement policy for float64.
"""

from __future__ import annotations

import importlib
import json
import os
import struct

import numpy as np
import pytest

import fpt_ref
import fpt_ref.hf as hf
from fpt_ref.hf.files import Tensors, bf16_to_float32, to_bf16_bits
from fpt_ref.tolerance import excess, natural_scales, tolerances, ulp

MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "Llama"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "Mistral"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "GPT2"),
}


def float64_islands(monkeypatch, kind: str) -> None:
    """Make transformers' ``kind`` model compute its norms, RoPE and softmax in float64."""
    import torch

    if kind == "gpt2":
        return
    mod = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    prefix = MODELS[kind][2]

    def norm_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        k = 2 * self.inv_freq.shape[0]
        theta = float(self.config.rope_parameters["rope_theta"])
        inv = torch.tensor(theta ** (-2.0 * np.arange(k // 2) / k), dtype=torch.float64)  # [k/2]
        freqs = position_ids[..., None].double() * inv  # [b, s, k/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [b, s, k]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = mod.repeat_kv(key, module.num_key_value_groups)
        value = mod.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    monkeypatch.setattr(getattr(mod, prefix + "RMSNorm"), "forward", norm_forward)
    monkeypatch.setattr(getattr(mod, prefix + "RotaryEmbedding"), "forward", rope_forward)
    monkeypatch.setattr(mod, "eager_attention_forward", eager)


def make_checkpoint(folder, kind: str, dtype="float32", seed: int = 0, **config):
    """A random transformers model of ``kind`` saved in ``folder`` (safetensors); returns the folder.

    Weights are drawn wider than transformers' init (std 0.5, gains 1 +- 0.3) so that the
    attention is far from uniform and every block matters to the logits.
    """
    import torch
    import transformers

    cfg_name, model_name, _ = MODELS[kind]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_name)(**config)
    model = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
            else:
                p.normal_(1.0 if ("norm" in name or "ln_" in name) else 0.0, 0.3)
    model.to(getattr(torch, dtype)).save_pretrained(folder, safe_serialization=True)
    return folder


def hf_logits(folder, ids):
    """transformers' float64 logits [b, s, V] of checkpoint ``folder`` (eager attention) on ``ids`` [b, s]."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.numpy()


def all_ids(vocab: int, s: int):
    """Token ids [b, s] that cover every id in ``[0, vocab)`` and every position ``< s``."""
    b = -(-vocab // s)
    return (np.arange(b * s) % vocab).reshape(b, s)


def output_bound(model, ids, dtype: str) -> tuple:
    """``(atol, rtol)`` of the output under the agreement policy for ``dtype`` (docs/tolerance.md)."""
    from fpt_ref.tolerance import path_lengths

    tol = tolerances(model, ids, dict.fromkeys(path_lengths(model, ids.shape[1])))[dtype]["output"]
    return tol["atol"], tol["rtol"]


def ulps_of_scale(model, ids, ref, out) -> float:
    """max |out - ref| in ulps (float64) of the natural output scale S of ``model`` on ``ids``."""
    S = natural_scales(model, ids)["output"]
    return float(np.max(np.abs(np.asarray(ref) - np.asarray(out)))) / ulp(S, np.float64)


# ---- no torch needed -----------------------------------------------------------------------


def test_bf16_bits_widen_exactly():
    bits = np.array([0x3F80, 0xC000, 0x3F00, 0x4049, 0x0000, 0x8000, 0x7F80], dtype=np.uint16)
    want = np.array([1.0, -2.0, 0.5, 3.140625, 0.0, -0.0, np.inf], dtype=np.float32)
    got = bf16_to_float32(bits)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.signbit(got[5])


def test_bf16_rounding_is_nearest_even_and_once():
    one = 1.0
    cases = {
        one: 0x3F80,
        one + 2.0**-8: 0x3F80,  # a tie: to the even neighbour 1.0
        one + 3 * 2.0**-8: 0x3F82,  # a tie: to the even neighbour 1 + 2^-6
        one + 2.0**-8 + 2.0**-30: 0x3F81,  # above the tie; float32 first would make it a tie (-> 0x3F80)
        -(one + 2.0**-7): 0xBF81,
        3.0e38 * 2: 0x7F80,  # beyond bfloat16's range: infinity
    }
    x = np.array(list(cases), dtype=np.float64)
    assert to_bf16_bits(x).tolist() == list(cases.values())
    assert to_bf16_bits(x[:5].astype(np.float32))[3] == 0x3F80  # the double rounding avoided above
    assert np.isnan(bf16_to_float32(to_bf16_bits(np.array([np.nan])))[0])


def _write_raw(path, entries: dict, data: bytes):
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


def test_bf16_tensor_read_from_raw_bytes(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x3F00, 0x4049, 0x3DCD, 0xBE80], dtype="<u2")
    _write_raw(
        tmp_path / "model.safetensors",
        {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}},
        bits.tobytes(),
    )
    got = Tensors(tmp_path).get("w")
    assert got.dtype == np.float64 and got.shape == (2, 3)
    assert got.ravel().tolist() == [1.0, -2.0, 0.5, 3.140625, 0.10009765625, -0.25]
    assert Tensors(tmp_path).stored_dtype() == "BF16"


def _folder(tmp_path, config: dict):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "vocab_size": 32,
    "max_position_embeddings": 16,
}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "qwen3"}, "q_norm"),
        ({"model_type": "mixtral"}, "mixture of experts"),
        ({"model_type": "bert"}, "model_type"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_parameters"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"hidden_act": "gelu_fast"}, "hidden_act"),
        ({"model_type": "mistral", "sliding_window": 8}, "sliding_window"),
        ({"model_type": "qwen2", "layer_types": ["chunked_attention"]}, "layer_types"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        (
            {
                "model_type": "gpt2",
                "n_embd": 16,
                "n_head": 4,
                "n_layer": 1,
                "n_positions": 8,
                "scale_attn_by_inverse_layer_idx": True,
            },
            "scale_attn_by_inverse_layer_idx",
        ),
        (
            {
                "model_type": "gpt2",
                "n_embd": 16,
                "n_head": 4,
                "n_layer": 1,
                "n_positions": 8,
                "activation_function": "gelu_10",
            },
            "activation_function",
        ),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(tmp_path, change, field):
    folder = _folder(tmp_path, dict(LLAMA, **change))
    with pytest.raises(ValueError, match=r"^config: ") as err:
        hf.load(folder)
    assert field in str(err.value)


def test_qwen2_sliding_layers_shorter_than_the_sequence_are_refused(tmp_path):
    cfg = dict(LLAMA, model_type="qwen2", use_sliding_window=True, sliding_window=4, layer_types=["sliding_attention"])
    with pytest.raises(ValueError, match="^config: sliding_window: a window of 4 positions"):
        hf.load(_folder(tmp_path, cfg))


def test_sliding_window_at_least_the_sequence_is_full_attention(tmp_path):
    folder = _folder(tmp_path, dict(LLAMA, model_type="mistral", sliding_window=8))
    with pytest.raises(ValueError, match="tensors: missing tensor 'model.layers.0.self_attn.q_proj.weight'"):
        hf.load(folder, max_seq=8)  # past the config checks: the window covers 8 positions


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="^path: .* has no config.json"):
        hf.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(ValueError, match="^path: .* holds neither model.safetensors"):
        hf.load(tmp_path)
    assert not hf.is_checkpoint(tmp_path)


# ---- against transformers ------------------------------------------------------------------

SMALL = {"vocab_size": 64, "max_position_embeddings": 16}
LLAMA_LIKE = dict(SMALL, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
CASES = {
    "llama_gqa_untied": ("llama", dict(LLAMA_LIKE, num_key_value_heads=2)),
    "llama_tied_bias": ("llama", dict(LLAMA_LIKE, tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    "mistral_mqa": ("mistral", dict(LLAMA_LIKE, num_key_value_heads=1, head_dim=16, rope_theta=500.0)),
    "qwen2_tied": ("qwen2", dict(LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-3)),
    "gpt2": ("gpt2", {"vocab_size": 64, "n_positions": 16, "n_embd": 32, "n_head": 4, "n_layer": 2}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    return {name: make_checkpoint(str(root / name), kind, **cfg) for name, (kind, cfg) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_transformers_in_float64(checkpoints, monkeypatch, case):
    kind = CASES[case][0]
    ck = hf.read(checkpoints[case])
    model = ck.model
    assert ck.family == kind and ck.stored_dtype == "float32" and model.dtype == np.float64
    ids = all_ids(model.vocab, model.s_max)
    out = fpt_ref.forward(model, ids)
    float64_islands(monkeypatch, kind)
    ref = hf_logits(checkpoints[case], ids)
    atol, rtol = output_bound(model, ids, "float64")
    assert float(np.max(excess(ref, out, atol, rtol))) <= 1.0
    assert ulps_of_scale(model, ids, ref, out) <= 8  # measured 2 (gpt2) to 4.0 (qwen2)


def test_float32_working_dtype_holds_the_stored_values(checkpoints):
    f32 = hf.load(checkpoints["qwen2_tied"], dtype="float32")
    f64 = hf.load(checkpoints["qwen2_tied"])
    assert f32.dtype == np.float32
    for name, a in fpt_ref.named_tensors(f64).items():
        assert np.array_equal(fpt_ref.named_tensors(f32)[name].astype(np.float64), a), name
    with pytest.raises(ValueError, match="^dtype: "):
        hf.load(checkpoints["qwen2_tied"], dtype="float16")


@pytest.mark.parametrize("case", ["llama_gqa_untied", "qwen2_tied"])
def test_forward_agrees_with_transformers_as_it_is(checkpoints, case):
    model = hf.load(checkpoints[case])
    ids = all_ids(model.vocab, model.s_max)
    ref = hf_logits(checkpoints[case], ids)
    out = fpt_ref.forward(model, ids)
    atol, rtol = output_bound(model, ids, "float32")
    assert float(np.max(excess(ref, out, atol, rtol))) <= 1.0


def test_wrong_grouping_is_caught(checkpoints, monkeypatch):
    """Mutation: query head j reading key/value head j % G (interleaved) instead of j // (H/G)."""
    from fpt_ref.model import Head

    model = hf.load(checkpoints["llama_gqa_untied"])
    L = model.layers[0]
    heads = [
        Head(**{**H.__dict__, **{k: getattr(L.heads[(e % L.G) * L.group_size], k) for k in ("w_k", "w_v")}})
        for e, H in enumerate(L.heads)
    ]
    wrong = model.replace(
        layers=(L.__class__(**{**L.__dict__, "heads": tuple(heads), "kv_heads": None}),) + model.layers[1:]
    )
    ids = all_ids(model.vocab, model.s_max)
    float64_islands(monkeypatch, "llama")
    ref = hf_logits(checkpoints["llama_gqa_untied"], ids)
    atol, rtol = output_bound(model, ids, "float64")
    assert float(np.max(excess(ref, fpt_ref.forward(model, ids), atol, rtol))) <= 1.0
    assert float(np.max(excess(ref, fpt_ref.forward(wrong, ids), atol, rtol))) > 1.0


def test_sharded_bf16_checkpoint_and_buffers(tmp_path, checkpoints, monkeypatch):
    """bf16 storage (widened exactly), shards with an index, GPT-2's causal-mask buffers (ignored)."""
    folder = make_checkpoint(str(tmp_path / "bf16"), "llama", dtype="bfloat16", **CASES["llama_gqa_untied"][1])
    ck = hf.read(folder)
    assert ck.stored_dtype == "bfloat16"
    for name, a in fpt_ref.named_tensors(ck.model).items():  # every value a bfloat16 value
        assert np.array_equal(bf16_to_float32(to_bf16_bits(a)), a), name
    ids = all_ids(ck.model.vocab, ck.model.s_max)
    with monkeypatch.context() as mp:
        float64_islands(mp, "llama")
        ref = hf_logits(folder, ids)  # transformers widens bf16 to float64 exactly too
    atol, rtol = output_bound(ck.model, ids, "float64")
    assert float(np.max(excess(ref, fpt_ref.forward(ck.model, ids), atol, rtol))) <= 1.0
    import transformers

    sharded = str(tmp_path / "sharded")
    transformers.AutoModelForCausalLM.from_pretrained(folder).save_pretrained(sharded, max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    again = hf.load(sharded)
    for name, a in fpt_ref.named_tensors(ck.model).items():
        assert np.array_equal(a, fpt_ref.named_tensors(again)[name]), name
    # GPT-2 with the causal-mask buffers of older files
    from safetensors.numpy import load_file, save_file

    g = checkpoints["gpt2"]
    tensors = load_file(os.path.join(g, "model.safetensors"))
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), dtype=np.float32))
    tensors["transformer.h.0.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    old = tmp_path / "old_gpt2"
    old.mkdir()
    save_file(tensors, str(old / "model.safetensors"), metadata={"format": "pt"})
    (old / "config.json").write_text(open(os.path.join(g, "config.json")).read())
    base, buffered = hf.load(g), hf.load(old)
    assert all(np.array_equal(a, fpt_ref.named_tensors(buffered)[n]) for n, a in fpt_ref.named_tensors(base).items())
    tensors["transformer.h.0.attn.q_norm.weight"] = np.ones(8, dtype=np.float32)
    save_file(tensors, str(old / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected tensor 'transformer.h.0.attn.q_norm.weight'"):
        hf.load(old)


@pytest.mark.parametrize("st", ["BF16", "F16", "F32", "F64"])
def test_tensors_are_written_in_blocks_of_rows_with_the_bytes_of_the_whole(tmp_path, st):
    """``write_safetensors_raw`` rounds a tensor larger than one block in blocks of rows, and
    transposed (non-contiguous) arrays as they are: the file holds the bytes of the whole tensor
    encoded at once, in C order; the values read back are the stored dtype's rounding of each entry."""
    from safetensors.numpy import load_file

    from fpt_ref.hf.files import CHUNK, STORED, _encode, write_safetensors_raw

    rng = np.random.default_rng(5)
    big = rng.normal(size=(CHUNK // 8 // 64 * 3 + 7, 64)) * 10.0 ** rng.integers(-40, 40, size=(1, 64))  # [R, 64]
    big[3, :4] = [np.nan, np.inf, -0.0, 2.0**-140]  # NaN, inf, -0.0, a float32 subnormal
    tensors = {"big": big, "tall_t": rng.normal(size=(64, CHUNK // 8 // 64 * 2 + 5)).T, "vec": rng.normal(size=5)}
    with np.errstate(over="ignore"):
        path = write_safetensors_raw(tmp_path / "t.safetensors", tensors, st, {"format": "pt"})
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    for key, a in tensors.items():
        lo, hi = header[key]["data_offsets"]
        with np.errstate(over="ignore"):
            assert body[lo:hi] == _encode(np.ascontiguousarray(a), st), key
        assert header[key]["shape"] == list(a.shape)
    if st != "BF16":  # safetensors' NumPy reader has no bfloat16
        back = load_file(path)
        with np.errstate(over="ignore"):
            assert all(np.array_equal(back[k], tensors[k].astype(STORED[st]), equal_nan=True) for k in tensors)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_untied_config_without_lm_head_is_refused_and_a_tied_copy_ignored(tmp_path, arch):
    """``tie_word_embeddings: false`` but no ``lm_head.weight``: refused (transformers would draw
    random weights); tied with a stored ``lm_head.weight`` of other values: the copy is ignored."""
    from fpt_ref.blocks import PRESETS
    from fpt_ref.hf.files import Tensors, write_checkpoint_tensors

    kw = dict(h=8, p=16, n_heads=2, k=4, v=4, n_layers=1, vocab=12, max_seq=4, causal=True, eps=1e-5, seed=1)
    like = {"gpt2": {"model_type": "gpt2"}, "llama": {"model_type": "llama"}}[arch]
    m = fpt_ref.init_model(**kw, arch=PRESETS[arch].replace(tied=True))
    folder = hf.save(m, tmp_path / "tied", like=like, dtype="float64")
    ts = Tensors(folder)
    tensors = {n: ts.get(n) for n in ts.names()}
    assert "lm_head.weight" not in tensors
    cfg = json.loads((tmp_path / "tied" / "config.json").read_text())
    untied = tmp_path / "untied"
    untied.mkdir()
    write_checkpoint_tensors(untied, tensors, "F64", {"format": "pt"})
    (untied / "config.json").write_text(json.dumps(dict(cfg, tie_word_embeddings=False)))
    with pytest.raises(ValueError, match="tie_word_embeddings: false, but the checkpoint has no lm_head.weight"):
        hf.read(untied)
    copy = tmp_path / "copy"
    copy.mkdir()
    write_checkpoint_tensors(copy, dict(tensors, **{"lm_head.weight": np.ones((12, 8))}), "F64", {"format": "pt"})
    (copy / "config.json").write_text(json.dumps(cfg))
    x = np.array([[0, 5, 11, 3]])
    assert np.array_equal(fpt_ref.forward(hf.load(copy), x), fpt_ref.forward(hf.load(folder), x))

"""Review of the streamed forward check (:mod:`fpt_ref.certify.stream_forward`), the blockwise
safetensors writer and the tolerance refactors they rest on (docs/certify.md section 7).

- ``run_stream`` is :func:`fpt_ref.forward.trace` and :func:`fpt_ref.tolerance.preservation_scale`
  of the loaded model, for every family and option the readers know: llama with attention and MLP
  biases, qwen2 (q/k/v biases), a tied llama (a stored ``lm_head`` copy ignored), GPT-2 (learned
  positions, LayerNorm with biases, tied output, Conv1D), mistral in float16 storage; the output
  matrix read in chunks that do not divide the vocabulary, one row at a time; the first and last
  token ids, one repeated token, one position and ``s_max`` positions.
- ``forward_folders`` accepts preserving growth of each family and rejects growth that is not
  (a new head's ``o_proj`` columns written, an unscaled norm gain under hidden growth, an
  inserted layer whose MLP bias writes, NaN in the output matrix), reports a smaller ``s_max``
  as its ``reason`` and refuses a smaller vocabulary; the CLI's ``--stream`` exit codes and JSON.
- ``write_safetensors_raw`` writes blocks of rows with the bytes of the whole tensor encoded at once.
- ``magnitudes`` / ``natural_scale`` / ``forward.output``, refactored into ``first_magnitude``,
  ``magnitude_step``, ``output_magnitude`` and ``final_normed``, compute bit for bit what the
  code before the refactor computed (kept here as the oracle).

Three findings of this review were fixed and their tests now pass: a float32 folder whose
scaled blocks are rounded is compared in float32 (as in memory), ``run_stream`` checks ``x`` as
``fpt_ref.forward.input_rows`` does, and the BF16 writer rounds values beyond its range to
infinity without a warning.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from test_stream_certify import _rewritten, llama_config, write_base

import fpt_ref
from fpt_ref import hf
from fpt_ref.blocks import PRESETS
from fpt_ref.certify import stream_forward
from fpt_ref.certify.stream import certify_folders
from fpt_ref.certify.stream_forward import forward_folders, run_stream
from fpt_ref.forward import trace
from fpt_ref.hf.stream import Stream
from fpt_ref.plan import parse_plan, run_plan
from fpt_ref.tolerance import preservation_scale, tolerance_abs

V = 37  # a prime: no chunk of more than one row divides it
S_MAX = 8


def _llama_like(model_type: str, arch, tied=False, **extra) -> tuple:
    cfg = {
        "model_type": model_type,
        "max_position_embeddings": S_MAX,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        **extra,
    }
    model = fpt_ref.init_model(
        h=16, p=24, n_heads=4, kv_heads=2, k=4, v=4, n_layers=2, vocab=V, out_dim=V, max_seq=S_MAX,
        causal=True, eps=1e-6, arch=arch.replace(tied=tied), seed=11,
    )  # fmt: skip
    return model, cfg


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """One small checkpoint folder per family and option (module doc), and its in-memory model."""
    root = tmp_path_factory.mktemp("families")
    llama, qwen2, gpt2 = PRESETS["llama"], PRESETS["qwen2"], PRESETS["gpt2"]
    cases = {
        "llama_biases": (
            _llama_like(
                "llama", llama.replace(qkv_bias=True, o_bias=True, mlp_bias=True), attention_bias=True, mlp_bias=True
            ),
            "float32",
        ),
        "qwen2": (_llama_like("qwen2", qwen2), "bfloat16"),
        "llama_tied": (_llama_like("llama", llama, tied=True), "float32"),
        "mistral_f16": (_llama_like("mistral", llama, sliding_window=None), "float16"),
    }
    out = {}
    for name, ((model, cfg), dt) in cases.items():
        out[name] = hf.save(model, root / name, like=cfg, dtype=dt)
    g = fpt_ref.init_model(
        h=16, p=64, n_heads=2, k=8, v=8, n_layers=2, vocab=V, max_seq=S_MAX, causal=True, eps=1e-5, arch=gpt2, seed=3
    )
    out["gpt2"] = hf.save(g, root / "gpt2", like={"model_type": "gpt2"}, dtype="float32")
    rng = np.random.default_rng(7)
    # a tied llama that also stores an lm_head copy of other values: transformers (and the reader) ignore it
    out["llama_tied_stale_head"] = _rewritten(
        out["llama_tied"], root / "stale", lambda t: t.__setitem__("lm_head.weight", rng.normal(size=(V, 16)))
    )
    return out


FAMILIES = ["llama_biases", "qwen2", "llama_tied", "llama_tied_stale_head", "mistral_f16", "gpt2"]


def _inputs() -> list:
    """Token ids [b, s]: the first and last ids in one sequence, one repeated id, one position, s_max positions."""
    return [
        np.array([[0, V - 1, 5, 5, 0, V - 1, 1, 2], [V - 1] * 8]),  # [2, 8]
        np.full((3, 5), 17),  # [3, 5] one distinct id
        np.array([[V - 1]]),  # [1, 1]
        np.random.default_rng(2).integers(0, V, size=(4, S_MAX)),  # [4, 8]
    ]


@pytest.mark.parametrize("name", FAMILIES)
def test_run_stream_is_the_in_memory_forward_and_scale(family, name, monkeypatch):
    """The streamed output within ``tolerance_abs(m, m, s, S)`` of ``trace(m, x).output`` and the
    streamed scale within 1e-12 of ``preservation_scale``, with the output matrix read whole, in
    chunks of 5 rows (37 = 7 x 5 + 2) and one row at a time."""
    folder = family[name]
    m = hf.load(folder, dtype="float64")
    arch = m.arch
    expected = {
        "llama_biases": (True, True, True, False, "rope"),
        "qwen2": (True, False, False, False, "rope"),
        "llama_tied": (False, False, False, True, "rope"),
        "llama_tied_stale_head": (False, False, False, True, "rope"),
        "mistral_f16": (False, False, False, False, "rope"),
        "gpt2": (True, True, True, True, "learned"),
    }[name]
    assert (arch.qkv_bias, arch.o_bias, arch.mlp_bias, arch.tied, arch.positions) == expected  # the option is on
    cases = [(x, trace(m, x)) for x in _inputs()]
    for chunk in (stream_forward.CHUNK_BYTES, 8 * m.h * 5, 1):
        monkeypatch.setattr(stream_forward, "CHUNK_BYTES", chunk)
        for x, tr in cases:
            s = x.shape[1]
            out, S_streamed = run_stream(Stream(folder, dtype="float64"), x)
            S = preservation_scale(m, tr)
            assert out.shape == tr.output.shape == (*x.shape, V) and out.dtype == np.float64
            assert np.max(np.abs(out - tr.output)) <= tolerance_abs(m, m, s, S), (name, chunk, x.shape)
            assert abs(S_streamed - S) <= 1e-12 * S, (name, chunk, x.shape, S_streamed, S)


def test_a_tied_model_reads_the_embedding_not_a_stored_head(family):
    """The stale ``lm_head`` copy changes nothing: the output is the embedding's, bit for bit the
    folder without it (a mutation check: reading the copy would move every logit)."""
    x = _inputs()[0]
    a, Sa = run_stream(Stream(family["llama_tied"], dtype="float64"), x)
    b, Sb = run_stream(Stream(family["llama_tied_stale_head"], dtype="float64"), x)
    assert np.array_equal(a, b) and Sa == Sb
    assert Stream(family["llama_tied_stale_head"]).kinds.get("w_out") is None


def test_model_wide_tables_are_read_by_rows_and_shards_change_nothing(family, tmp_path, monkeypatch):
    """The embedding is read at the sampled ids only and the output matrix in row ranges that
    cover ``[0, V)`` once (never a whole table); a sharded copy of the folder gives the same bits."""
    from fpt_ref.hf.files import Tensors

    folder = family["llama_biases"]
    x = _inputs()[0]  # [2, 8]
    whole, S = run_stream(Stream(folder, dtype="float64"), x)
    m = hf.load(folder, dtype="float64")
    sharded = hf.save(m, tmp_path / "sharded", like=folder, shard_bytes=3000)
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    calls = []
    real = Tensors.read

    def read(self, name, dtype=np.float32, index=None):
        calls.append((name, index))
        return real(self, name, dtype, index)

    monkeypatch.setattr(Tensors, "read", read)
    monkeypatch.setattr(stream_forward, "CHUNK_BYTES", 8 * m.h * 5)  # 5 rows at a time
    out, S2 = run_stream(Stream(sharded, dtype="float64"), x)
    assert np.array_equal(out, whole) and S2 == S
    tables = [(n, i) for n, i in calls if n in ("model.embed_tokens.weight", "lm_head.weight")]
    assert all(i is not None for _, i in tables)  # no table read whole
    (emb,) = [i for n, i in tables if n == "model.embed_tokens.weight"]
    assert np.array_equal(np.asarray(emb[0]), np.unique(x))
    rows = [i[0] for n, i in tables if n == "lm_head.weight"]
    assert [(r.start, min(r.stop, V)) for r in rows] == [(lo, min(lo + 5, V)) for lo in range(0, V, 5)]


def test_gpt2_positions_are_read_up_to_s_under_a_max_seq_cap(family):
    """``Stream(max_seq=4)`` keeps the first 4 rows of ``wpe``: the streamed forward of 4 positions
    is the capped model's."""
    m = hf.load(family["gpt2"], dtype="float64", max_seq=4)
    x = _inputs()[0][:, :4]  # [2, 4]
    tr = trace(m, x)
    out, S_streamed = run_stream(Stream(family["gpt2"], dtype="float64", max_seq=4), x)
    S = preservation_scale(m, tr)
    assert np.max(np.abs(out - tr.output)) <= tolerance_abs(m, m, 4, S) and abs(S_streamed - S) <= 1e-12 * S


def test_out_of_range_token_ids_are_refused_by_name(family):
    s = Stream(family["llama_biases"], dtype="float64")
    for bad in ([[0, V]], [[-1, 3]]):
        with pytest.raises(ValueError, match=r"^x: token ids must lie in \[0, 37\)"):
            run_stream(s, np.array(bad))


@pytest.mark.parametrize("name", ["llama_biases", "gpt2"])
def test_run_stream_refuses_sequences_longer_than_s_max(family, name):
    x = np.zeros((1, S_MAX + 1), dtype=np.int64)  # [1, 9]
    with pytest.raises(ValueError, match=r"^x: sequence length 9 must be between 1 and s_max=8"):
        run_stream(Stream(family[name], dtype="float64"), x)


@pytest.mark.parametrize("x", [np.zeros((1, 3)), np.zeros(3, dtype=np.int64)])
def test_run_stream_refuses_inputs_that_are_not_token_id_matrices(family, x):
    with pytest.raises(ValueError, match=r"^x: "):
        run_stream(Stream(family["llama_biases"], dtype="float64"), x)


# ---- forward_folders: growth accepted and rejected --------------------------------------------


def _grow(folder, plan: str, out, dtype=None, seed=1) -> str:
    model = hf.load(folder, dtype="float64")
    grown = run_plan(model, parse_plan(plan), seed=seed)[-1].model
    return hf.save(grown, out, like=folder, dtype=dtype)


@pytest.fixture(scope="module")
def grown(family, tmp_path_factory):
    """Preserving growth of each family, stored in float64 (every scaled block exact)."""
    root = tmp_path_factory.mktemp("grown")
    out = {}
    plans = {
        "llama_biases": "mlp p=32; add_heads count=4; add_layer at=1; hidden h=32",
        "qwen2": "add_layer at=2; attention k=8; heads v=8; add_heads count=2",
        "gpt2": "mlp p=96; add_layer at=1; add_heads count=2; hidden h=32",
        "llama_tied": "hidden h=32; add_layer at=0",
    }
    for name, plan in plans.items():
        out[name] = _grow(family[name], plan, root / name, dtype="float64")
    return out


@pytest.mark.parametrize("name", ["llama_biases", "qwen2", "gpt2", "llama_tied"])
def test_preserving_growth_is_accepted_on_the_sample(family, grown, name):
    res = forward_folders(family[name], grown[name])
    assert res["ok"] and res["reason"] is None and 0 <= res["max_abs"] <= res["tol_abs"], (name, res)
    assert res["inputs"] == {
        "sets": {"random": [2, S_MAX]},
        "sampled": True,
        "tokens_covered": res["inputs"]["tokens_covered"],
    }
    assert 1 <= res["inputs"]["tokens_covered"] <= 2 * S_MAX and res["dtype"] == "float64"
    # the tolerance is the in-memory one on the same inputs: (L(a, s) + L(b, s) + 4) ulp(S)
    a, b = hf.load(family[name], dtype="float64"), hf.load(grown[name], dtype="float64")
    x = fpt_ref.init.random_inputs(a, 2, S_MAX, 0)
    S = preservation_scale(a, trace(a, x))
    assert res["tol_abs"] == pytest.approx(tolerance_abs(a, b, S_MAX, S), rel=1e-12)
    assert res["max_abs"] == pytest.approx(
        float(np.max(np.abs(fpt_ref.forward(a, x) - fpt_ref.forward(b, x)))), abs=res["tol_abs"]
    )


def _set(name, where, value):
    def change(t):
        a = np.array(t[name], dtype=np.float64)
        a[where] = value
        t[name] = a

    return change


def test_a_new_heads_o_proj_columns_written_are_rejected(family, tmp_path):
    """llama with biases, 4 -> 8 query heads in 2 groups: the new heads sit at places 2, 3, 6, 7
    (old heads first in each group); o_proj's columns of head 2 set to 0.25 write its output."""
    wide = _grow(family["llama_biases"], "add_heads count=4", tmp_path / "wide", dtype="float64")
    assert forward_folders(family["llama_biases"], wide)["ok"]
    d = 4
    for n in (0, 1):
        bad = _rewritten(
            wide,
            tmp_path / f"bad{n}",
            _set(f"model.layers.{n}.self_attn.o_proj.weight", (slice(None), slice(2 * d, 3 * d)), 0.25),
        )
        res = forward_folders(family["llama_biases"], bad)
        assert not res["ok"] and res["max_abs"] > res["tol_abs"] and res["reason"] is None, (n, res)


def test_an_unscaled_norm_gain_under_hidden_growth_is_rejected(tmp_path):
    """Hidden growth h 16 -> 32 (RMSNorm gains x 1/sqrt(2)): exact in float64 storage and accepted;
    one gain left unscaled (its old entries the base's) is rejected, in float64 and float32 storage."""
    base = write_base(tmp_path / "base", dict(llama_config(h=16, p=24, N=2, H=4, G=2, d=4, V=V)), "F32")
    f64 = _grow(base, "hidden h=32", tmp_path / "f64", dtype="float64")
    assert forward_folders(base, f64)["ok"]
    from fpt_ref.hf.files import Tensors

    old = Tensors(base)
    for st in ("float64", "float32"):
        good = _grow(base, "hidden h=32", tmp_path / f"good_{st}", dtype=st)
        for tensor in ("model.norm.weight", "model.layers.1.post_attention_layernorm.weight"):
            bad = _rewritten(good, tmp_path / f"bad_{st}_{tensor}", _set(tensor, slice(0, 16), old.get(tensor)))
            res = forward_folders(base, bad)
            assert not res["ok"] and res["max_abs"] > res["tol_abs"], (st, tensor, res)
            # the same verdict where the storage rounding is allowed for: float32, as in memory
            a, b = hf.load(base, dtype="float32"), hf.load(bad, dtype="float32")
            assert not fpt_ref.verify(a, b, batch=2, seed=0)["ok"], (st, tensor)


def test_float32_hidden_growth_is_certified_with_the_forward_check(tmp_path):
    base = write_base(tmp_path / "base", dict(llama_config(h=16, p=24, N=2, H=4, G=2, d=4, V=V)), "F32")
    good = _grow(base, "hidden h=32", tmp_path / "good", dtype="float32")
    blocks = certify_folders(base, good)
    assert blocks.ok and blocks.scaled_rounding > 0  # every block holds within its float32 rounding
    b, g = hf.read(base, dtype="float32"), hf.read(good, dtype="float32")
    memory = fpt_ref.certify.certify(b.model, g.model, base_config=b.config, grown_config=g.config)
    assert memory.ok and memory.forward["dtype"] == "float32"  # in memory: certified, forward in float32
    cert = certify_folders(base, good, forward=True)
    assert cert.ok, [(f.tensor, f.reason) for f in cert.findings]


def test_an_inserted_layer_whose_mlp_bias_writes_is_rejected(family, tmp_path):
    """llama with MLP biases, a layer inserted at 1: its down_proj bias (b_l2) one nonzero entry
    writes a constant to the stream; every weight is untouched."""
    ins = _grow(family["llama_biases"], "add_layer at=1", tmp_path / "ins", dtype="float64")
    assert forward_folders(family["llama_biases"], ins)["ok"]
    for value in (1e-3, 1e-9):  # 1e-9 moves the outputs by about 11 times the tolerance (5.4e-11 here)
        bad = _rewritten(ins, tmp_path / f"bad{value}", _set("model.layers.1.mlp.down_proj.bias", 3, value))
        res = forward_folders(family["llama_biases"], bad)
        assert not res["ok"] and res["max_abs"] > res["tol_abs"], (value, res)


def test_nan_in_the_grown_output_matrix_is_rejected(family, tmp_path):
    bad = _rewritten(family["llama_biases"], tmp_path / "nan", _set("lm_head.weight", (V - 1, 0), np.nan))
    res = forward_folders(family["llama_biases"], bad)
    assert not res["ok"] and res["max_abs"] == float("inf")


def test_a_smaller_s_max_is_the_reason_and_a_smaller_vocabulary_is_refused(family, tmp_path):
    """A grown config with max_position_embeddings 4 < 8: every sampled output agrees (the
    tensors are the base's), and the result is not ok with the reason; ``seq`` is capped by both
    s_max. A smaller vocabulary changes the output size: ``models:``, as :func:`fpt_ref.verify`."""
    base = family["llama_biases"]
    short = tmp_path / "short"
    _rewritten(base, short, lambda t: None)
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(dict(cfg, max_position_embeddings=4)))
    res = forward_folders(base, short, seq=100)
    assert not res["ok"] and res["max_abs"] == 0.0 and res["inputs"]["sets"] == {"random": [2, 4]}
    assert res["reason"] == "the second model takes 4 positions, the first 8: longer inputs are lost"
    assert forward_folders(base, short, max_seq=4)["ok"]  # both capped at 4: nothing is lost
    assert forward_folders(base, base, seq=3, batch=1)["inputs"]["sets"] == {"random": [1, 3]}
    cert = certify_folders(base, short, forward=True)  # the structure differs first: no forward, as in memory
    assert not cert.ok and cert.first.tensor == "max_seq" and cert.forward is None
    narrow = _rewritten(
        base,
        tmp_path / "narrow",
        lambda t: t.update({k: np.array(t[k])[: V - 1] for k in ("model.embed_tokens.weight", "lm_head.weight")}),
    )
    cfg = json.loads(open(os.path.join(narrow, "config.json")).read())
    with open(os.path.join(narrow, "config.json"), "w") as f:
        json.dump(dict(cfg, vocab_size=V - 1), f)
    with pytest.raises(ValueError, match=r"^models: output sizes differ \(o=37 vs o=36\)"):
        forward_folders(base, narrow)
    for bad in ({"batch": 0}, {"seq": 0}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}: "):
            forward_folders(base, base, **bad)


# ---- the CLI ---------------------------------------------------------------------------------------


def test_cli_stream_exit_codes_and_json(family, grown, tmp_path, capsys):
    """In process (the console script's code path): ``--stream`` 0 preserved, 1 not preserved with
    the forward finding, ``--no-forward`` 0 with ``forward`` null, 2 for a folder that is not one."""
    from fpt_ref.cli import main

    base = family["gpt2"]
    assert main(["certify", base, grown["gpt2"], "--stream"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("preserved: ") and f"2 random sequences of {S_MAX} tokens" in out
    assert main(["certify", base, grown["gpt2"], "--stream", "--no-forward", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["forward"] is None and d["forward_run"] is False and d["blocks_certified"] is True
    # the inserted GPT-2 layer's c_proj bias writes: blocks and forward both reject it
    ts = hf.files.Tensors(grown["gpt2"])
    (name,) = [n for n in ts.names() if n.endswith("h.1.mlp.c_proj.bias")]
    bad = _rewritten(grown["gpt2"], tmp_path / "bad", _set(name, 0, 1e-2))
    assert main(["certify", base, bad, "--stream", "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["preserved"] is False and d["forward"]["ok"] is False and d["forward"]["max_abs"] > d["forward"]["tol_abs"]
    assert main(["certify", base, bad, "--stream", "--no-forward"]) == 1
    assert capsys.readouterr().out.startswith("not preserved: ")
    assert main(["certify", base, str(tmp_path / "missing"), "--stream"]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err


# ---- the blockwise writer --------------------------------------------------------------------------


def _whole(a, st: str) -> bytes:
    """The whole tensor encoded at once, independently of the writer: C order, little-endian."""
    from fpt_ref.hf.files import to_bf16_bits

    a = np.asarray(a)
    if st == "BF16":
        with np.errstate(over="ignore"):
            bits = a if a.dtype == np.uint16 else to_bf16_bits(np.ascontiguousarray(a))
        return np.ascontiguousarray(bits, dtype="<u2").tobytes()
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a, dtype={"F64": "<f8", "F32": "<f4", "F16": "<f2"}[st]).tobytes()


def _tensors() -> dict:
    rng = np.random.default_rng(3)
    big = rng.normal(size=(7, 5, 3)) * 10.0 ** rng.integers(-45, 45, size=(7, 5, 3))  # [7, 5, 3] float32 under/overflow
    f = np.asfortranarray(rng.normal(size=(9, 4)))  # [9, 4] F order
    return {
        "scalar": np.array(3.25),  # 0-d
        "vec": rng.normal(size=11),  # [11]
        "rows0": np.zeros((0, 6)),  # [0, 6]
        "cols0": np.zeros((4, 0)),  # [4, 0]
        "cube": big,  # [7, 5, 3]
        "fortran": f,
        "strided": rng.normal(size=(10, 12))[::3, ::-2],  # [4, 6] negative and non-unit strides
        "transposed": rng.normal(size=(6, 9)).T,  # [9, 6] a transposed view
        "f32": rng.normal(size=(5, 4)).astype(np.float32)[:, ::2],  # [5, 2] float32, strided
        "bcast": np.broadcast_to(np.float64(-0.0), (6, 3)),  # [6, 3] zero strides
    }


@pytest.mark.parametrize("st", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize("chunk", [None, 1, 24])
def test_blockwise_writer_bytes_are_the_whole_tensor_encoding(tmp_path, monkeypatch, st, chunk):
    """Every tensor of :func:`_tensors` (0-d, 1-d, 0 rows, 0 columns, 3-d, F order, negative strides,
    transposed, float32, broadcast) in blocks of 1 row (``CHUNK`` 1) and of a few rows (24 bytes):
    the file's bytes are the whole tensor's encoding; the header's offsets are contiguous."""
    from fpt_ref.hf import files

    if chunk is not None:
        monkeypatch.setattr(files, "CHUNK", chunk)
    tensors = _tensors()
    with np.errstate(over="ignore"):
        path = files.write_safetensors_raw(tmp_path / "t.safetensors", tensors, st, {"format": "pt"})
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    end = 0
    for key in sorted(tensors):
        lo, hi = header[key]["data_offsets"]
        assert lo == end and header[key]["shape"] == list(tensors[key].shape) and header[key]["dtype"] == st
        assert body[lo:hi] == _whole(tensors[key], st), key
        end = hi
    assert end == len(body)
    if st != "BF16":  # an independent reader
        from safetensors.numpy import load_file

        back = load_file(path)
        for key, a in tensors.items():
            with np.errstate(over="ignore"):
                assert np.array_equal(back[key], np.asarray(a).astype(files.STORED[st])), key


def test_bf16_special_values_and_raw_bits_in_blocks(tmp_path, monkeypatch):
    """NaN, +-inf, -0.0, the largest finite values, values that round to inf, subnormals, ties:
    the BF16 bits written one row at a time are the known patterns; ``uint16`` bits (non-contiguous)
    are written as they are."""
    from fpt_ref.hf import files

    vals = np.array(
        [
            [np.nan, np.inf, -np.inf, -0.0],
            [0.0, 1.0, -2.0, 3.3895313892515355e38],  # the largest finite bf16
            [3.4e38, -3.4e38, 2.0**-133, -(2.0**-133)],  # overflow to inf; bf16 subnormal 2^-133
            [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20, 2.0**-149],  # ties to even; above a tie
        ]
    )  # [4, 4]
    expect = np.array(
        [
            [0x7FC0, 0x7F80, 0xFF80, 0x8000],
            [0x0000, 0x3F80, 0xC000, 0x7F7F],
            [0x7F80, 0xFF80, 0x0001, 0x8001],
            [0x3F80, 0x3F82, 0x3F81, 0x0000],
        ],
        dtype=np.uint16,
    )
    bits = np.arange(24, dtype=np.uint16).reshape(4, 6)[:, ::2]  # [4, 3] strided raw bits
    for given in (vals, vals.astype(np.float32), np.asfortranarray(vals)):
        monkeypatch.setattr(files, "CHUNK", 1)  # one row per block
        path = files.write_safetensors_raw(tmp_path / "model.safetensors", {"v": given, "w": bits}, "BF16", {})
        monkeypatch.undo()  # the reader's own chunks
        t = files.Tensors(os.path.dirname(path))
        got = t.raw("v")
        assert np.array_equal(got, expect), [hex(v) for v in got.ravel()]
        assert np.array_equal(t.raw("w"), bits)
        back = t.read("v", np.float32)
        assert np.signbit(back[0, 3]) and np.isnan(back[0, 0]) and back[2, 0] == np.inf
    # float64 just above a tie that float32 would round onto the tie: rounded once, up
    monkeypatch.setattr(files, "CHUNK", 1)
    path = files.write_safetensors_raw(
        tmp_path / "model.safetensors", {"v": np.array([1.0 + 2.0**-8 + 2.0**-40])}, "BF16", {}
    )
    monkeypatch.undo()
    assert files.Tensors(os.path.dirname(path)).raw("v").tolist() == [0x3F81]


# ---- the refactors: the code before them is the oracle ----------------------------------------------


def _old_magnitudes(model, tr, nested: bool) -> list:
    """``fpt_ref.tolerance.magnitudes`` as it stood before ``first_magnitude`` / ``magnitude_step``."""
    xp = model.xp
    s = tr.inputs.shape[-2]
    M = xp.abs(tr.inputs)
    if model.pos is not None:
        M = M + xp.abs(model.pos[:s])
    out = [M]

    def plus(a, bias):
        return a if bias is None else a + xp.abs(bias)

    for layer, t in zip(model.layers, tr.layers):
        if nested:
            w_v = xp.concatenate([hd.w_v for hd in layer.heads], axis=1)
            w_o = xp.concatenate([hd.w_o for hd in layer.heads], axis=0)
            V_ = xp.abs(t.attn_in) @ xp.abs(w_v)
            if model.arch.qkv_bias:
                V_ = V_ + xp.abs(xp.concatenate([hd.b_v for hd in layer.heads]))
            H = xp.max(V_, axis=-2, keepdims=True)
            A = plus(xp.abs(t.mlp_in) @ xp.abs(layer.w_l1), layer.b_l1)
            if layer.w_gate is not None:
                A = A * plus(xp.abs(t.mlp_in) @ xp.abs(layer.w_gate), layer.b_gate)
        else:
            w_o = t.w_o
            H, A = xp.abs(t.heads), xp.abs(t.act)
        M = plus(M + H @ xp.abs(w_o), layer.b_o)
        M = plus(M + A @ xp.abs(layer.w_l2), layer.b_l2)
        out.append(M)
    return out


def _old_natural_scale(model, last, stream=None) -> float:
    xp = model.xp
    if not last.size:
        return 0.0
    f64 = xp.float64
    M = xp.abs(last).astype(f64)
    if model.final_norm is not None:
        X = stream.astype(f64)
        if model.arch.norm == "layer":
            X = X - xp.mean(X, axis=-1, keepdims=True)
        r = xp.sqrt(xp.mean(X * X, axis=-1, keepdims=True) + model.norm_eps)
        M = M * xp.abs(model.final_norm).astype(f64) / xp.maximum(r, xp.finfo(f64).tiny)
        if model.final_norm_b is not None:
            M = M + xp.abs(model.final_norm_b).astype(f64)
    return float(xp.max(M @ xp.abs(model.output_matrix).astype(f64)))


def _refactor_models() -> dict:
    mk = fpt_ref.init_model
    return {
        "paper_learned_positions": (
            mk(h=8, p=12, n_heads=2, k=4, v=3, n_layers=2, vocab=20, out_dim=6, max_seq=6, seed=1),
            "ids",
        ),
        "paper_real_inputs": (mk(h=8, p=12, n_heads=2, k=4, v=3, n_layers=2, out_dim=6, max_seq=6, seed=2), "real"),
        "gpt2": (
            mk(h=8, p=16, n_heads=2, k=4, v=4, n_layers=2, vocab=20, max_seq=6, eps=1e-5, arch="gpt2", seed=3),
            "ids",
        ),
        "llama_biases_f32": (
            mk(
                h=8,
                p=12,
                n_heads=4,
                kv_heads=2,
                k=4,
                v=4,
                n_layers=2,
                vocab=20,
                out_dim=20,
                max_seq=6,
                eps=1e-6,
                arch=PRESETS["llama"].replace(qkv_bias=True, o_bias=True, mlp_bias=True),
                dtype="float32",
                seed=4,
            ),
            "ids",
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", list(_refactor_models()))
def test_refactored_magnitudes_and_scales_are_bit_for_bit_the_old_ones(name):
    """``magnitudes`` (learned positions, real inputs, LayerNorm, biases, float32), ``natural_scale``,
    ``preservation_scale`` and ``forward.output`` equal the pre-refactor code exactly, nested or
    not, batched or not."""
    from fpt_ref.forward import _dense, norm, output
    from fpt_ref.init import random_inputs
    from fpt_ref.tolerance import first_magnitude, magnitudes, natural_scale

    model, kind = _refactor_models()[name]
    x = random_inputs(model, 3, 5, seed=9)  # [3, 5] ids or [3, 5, h] real
    for xs in (x, x[0]):  # batched and unbatched
        tr = trace(model, xs)
        for nested in (True, False):
            new, old = magnitudes(model, tr, nested), _old_magnitudes(model, tr, nested)
            assert len(new) == len(old) == model.N + 1
            assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(new, old)), (name, nested)
            assert natural_scale(model, new[-1], tr.streams[-1]) == _old_natural_scale(model, old[-1], tr.streams[-1])
        assert preservation_scale(model, tr) == _old_natural_scale(
            model, _old_magnitudes(model, tr, True)[-1], tr.streams[-1]
        )
        if model.pos is not None:  # M_1 = |I| + |P[:s]|, not |I| alone
            assert not np.array_equal(first_magnitude(model, tr.inputs, model.pos), np.abs(tr.inputs))
        X = tr.streams[-1] if tr.streams[-1].ndim == 3 else tr.streams[-1][None]  # [b, s, h]
        old_out = _dense(
            X if model.final_norm is None else norm(model, X, model.final_norm, model.final_norm_b), model.output_matrix
        )
        assert np.array_equal(output(model, X), old_out) and np.array_equal(tr.output, old_out.reshape(tr.output.shape))
    assert natural_scale(model, np.zeros((0, model.h)), np.zeros((0, model.h))) == 0.0


def test_bf16_writer_rounds_beyond_its_range_to_inf_without_a_warning(tmp_path):
    """A tensor holding a value beyond float32's range and one below its smallest normal: written
    as BF16 with no RuntimeWarning (an error under ``-W error``), the first as inf."""
    import warnings

    from fpt_ref.hf import files
    from fpt_ref.hf.files import Tensors, bf16_to_float32

    a = np.array([[1e39, -1e39, 1e-40, 1.0]])  # [1, 4] float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files.write_safetensors_raw(tmp_path / "model.safetensors", {"t": a}, "BF16", {"format": "pt"})
    bits = Tensors(str(tmp_path)).raw("t")
    back = bf16_to_float32(bits)
    assert back[0, 0] == np.inf and back[0, 1] == -np.inf and back[0, 3] == 1.0 and 0 < back[0, 2] < 2e-40

"""The streaming certification of checkpoint folders (:mod:`fpt_ref.certify.stream`, docs/certify.md).

It must reach the in-memory certification's verdict with the same findings, alignment and
block count (forward check aside) on accepted and rejected folders, bf16 and sharded ones
included, and hold about two layers at a time: the memory test fails if it loads either model.
Checkpoints are written with :mod:`fpt_ref.hf` (no transformers needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from fpt_ref import hf
from fpt_ref.certify import certify
from fpt_ref.certify.stream import certify_folders
from fpt_ref.hf.files import CHUNK, write_checkpoint_tensors
from fpt_ref.hf.stream import Stream
from fpt_ref.plan import parse_plan, run_plan

PLAN = "mlp p=64; add_layer at=1; heads v=16; attention k=16; add_heads count=4; hidden h=64"


def llama_config(h=32, p=48, N=3, H=4, G=2, d=8, V=64, **kw) -> dict:
    return dict(
        model_type="llama",
        hidden_size=h,
        intermediate_size=p,
        num_hidden_layers=N,
        num_attention_heads=H,
        num_key_value_heads=G,
        head_dim=d,
        vocab_size=V,
        max_position_embeddings=16,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
        **kw,
    )


def write_base(folder, config: dict, st_dtype="F32", seed=0, shard_bytes=None) -> str:
    """A llama checkpoint folder of random tensors (normal values) in ``st_dtype``."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    h, p, N, H = (config[k] for k in keys)
    G, d, V = (config[k] for k in ("num_key_value_heads", "head_dim", "vocab_size"))
    shapes = {"model.embed_tokens.weight": (V, h), "model.norm.weight": (h,), "lm_head.weight": (V, h)}
    for n in range(N):
        a = f"model.layers.{n}."
        shapes.update(
            {
                a + "input_layernorm.weight": (h,),
                a + "post_attention_layernorm.weight": (h,),
                a + "self_attn.q_proj.weight": (H * d, h),
                a + "self_attn.k_proj.weight": (G * d, h),
                a + "self_attn.v_proj.weight": (G * d, h),
                a + "self_attn.o_proj.weight": (h, H * d),
                a + "mlp.gate_proj.weight": (p, h),
                a + "mlp.up_proj.weight": (p, h),
                a + "mlp.down_proj.weight": (h, p),
            }
        )
    rng = np.random.default_rng(seed)
    tensors = {k: rng.normal(size=s) for k, s in shapes.items()}
    os.makedirs(folder, exist_ok=True)
    write_checkpoint_tensors(folder, tensors, st_dtype, {"format": "pt"}, shard_bytes)
    name = {"F32": "float32", "BF16": "bfloat16", "F64": "float64"}[st_dtype]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dict(config, dtype=name), f)
    return str(folder)


def llama_pro(base, out, after, zero=("self_attn.o_proj", "mlp.down_proj"), shard_bytes=None) -> str:
    """LLaMA-Pro's block expansion of folder ``base`` (copies of the layers in ``after`` inserted
    after them, the tensors in ``zero`` of each copy zero), stored in the base's dtype."""
    from fpt_ref.hf.files import STORED, Tensors, read_config

    ts, config = Tensors(base), read_config(base)
    out_t, j = {}, 0
    for i in range(config["num_hidden_layers"]):
        for copy in (False, True) if i in after else (False,):
            pre = f"model.layers.{i}."
            for name in ts.names():
                if name.startswith(pre):
                    rest = name[len(pre) :]
                    a = ts.get(name)
                    out_t[f"model.layers.{j}.{rest}"] = a * 0 if copy and rest.startswith(zero) else a
            j += 1
    for name in ts.names():
        if not name.startswith("model.layers."):
            out_t[name] = ts.get(name)
    os.makedirs(out, exist_ok=True)
    st = ts.stored_dtype()
    assert st in STORED
    write_checkpoint_tensors(out, out_t, st, {"format": "pt"}, shard_bytes)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(config, num_hidden_layers=j), f)
    return str(out)


def in_memory(base, grown, dtype):
    """The in-memory certificate (blocks, options and configs; no forward) in working dtype ``dtype``."""
    b, g = hf.read(base, dtype=dtype), hf.read(grown, dtype=dtype)
    return certify(b.model, g.model, forward=False, base_config=b.config, grown_config=g.config)


def same(streamed, memory) -> None:
    def rows(c):
        return [(f.tensor, f.block, f.reason) for f in c.findings]

    assert streamed.ok == memory.ok
    assert rows(streamed) == rows(memory)
    assert streamed.layers == memory.layers
    assert streamed.blocks == memory.blocks and streamed.sets == memory.sets
    assert streamed.base == memory.base and streamed.grown == memory.grown


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for st in ("F32", "BF16"):
        base = write_base(root / f"base_{st}", llama_config(), st)
        model = hf.load(base, max_seq=8)
        grown = run_plan(model, parse_plan(PLAN), seed=1)[-1].model
        out[st] = base
        out[f"plan_{st}_f64"] = hf.save(grown, root / f"plan_{st}_f64", like=base, dtype="float64")
        out[f"plan_{st}_own"] = hf.save(grown, root / f"plan_{st}_own", like=base)  # rounded scaled blocks
        out[f"pro_{st}"] = llama_pro(base, root / f"pro_{st}", after=[0, 2])
        out[f"pro_{st}_sharded"] = llama_pro(base, root / f"pro_{st}_sharded", after=[1], shard_bytes=20_000)
        out[f"pro_{st}_down_left"] = llama_pro(base, root / f"pro_{st}_down", after=[1], zero=("self_attn.o_proj",))
        # every layer grown, hidden size kept: the base's tensors are the leading corners of the grown ones
        wide = run_plan(model, parse_plan("mlp p=64; add_heads count=4"), seed=2)[-1].model
        out[f"wide_{st}"] = hf.save(wide, root / f"wide_{st}", like=base)
    return out


@pytest.mark.parametrize("st", ["F32", "BF16"])
@pytest.mark.parametrize(
    "grown,ok",
    [
        ("plan_{}_f64", True),
        ("plan_{}_own", None),
        ("pro_{}", True),
        ("pro_{}_sharded", True),
        ("pro_{}_down_left", False),
        ("wide_{}", True),
    ],
)
def test_streamed_certificate_is_the_in_memory_one(folders, st, grown, ok):
    base, grown = folders[st], folders[grown.format(st)]
    for dtype in ("float32", "float64"):
        streamed = certify_folders(base, grown, dtype=dtype, max_seq=8)
        same(streamed, in_memory(base, grown, dtype))
    if ok is not None:
        assert streamed.ok is ok
    if ok is False:
        assert streamed.first.tensor == "layers.2.mlp.w_l2" or "w_l2" in streamed.first.tensor
    # the default working dtype widens the storage exactly: float64 when either stores float64
    default = certify_folders(base, grown, max_seq=8)
    f64 = "f64" in grown
    same(default, in_memory(base, grown, "float64" if f64 else "float32"))


def test_rounded_scaled_blocks_are_rejected_in_bf16(folders):
    """Stored in bf16, a scaled block x 1/sqrt(2) is rounded: not certified (docs/certify.md, Limits)."""
    cert = certify_folders(folders["BF16"], folders["plan_BF16_own"])
    assert not cert.ok and "scaled block must be" in cert.first.reason


def test_mutations_are_rejected_with_the_in_memory_findings(folders, tmp_path):
    base = folders["F32"]
    cases = {}
    # a copied entry changed in grown layer 2 (it holds base layer 1; grown layer 1 is the inserted copy)
    ts = hf.files.Tensors(folders["pro_F32"])
    tensors = {n: ts.get(n) for n in ts.names()}
    changed = dict(tensors)
    changed["model.layers.2.self_attn.q_proj.weight"] = tensors["model.layers.2.self_attn.q_proj.weight"].copy()
    changed["model.layers.2.self_attn.q_proj.weight"][3, 5] += 1.0
    cases["copy"] = changed
    zeroed = dict(tensors)  # the inserted copy's o_proj not zero: not an identity layer
    zeroed["model.layers.1.self_attn.o_proj.weight"] = tensors["model.layers.0.self_attn.o_proj.weight"]
    cases["identity"] = zeroed
    swapped = dict(tensors)  # two original layers exchanged
    for rest in [n[len("model.layers.3.") :] for n in tensors if n.startswith("model.layers.3.")]:
        swapped[f"model.layers.3.{rest}"] = tensors[f"model.layers.2.{rest}"]
        swapped[f"model.layers.2.{rest}"] = tensors[f"model.layers.3.{rest}"]
    cases["reordered"] = swapped
    with open(os.path.join(folders["pro_F32"], "config.json")) as f:
        config = json.load(f)
    for name, t in cases.items():
        out = tmp_path / name
        out.mkdir()
        write_checkpoint_tensors(out, t, "F32", {"format": "pt"})
        (out / "config.json").write_text(json.dumps(config))
        streamed = certify_folders(base, out)
        assert not streamed.ok, name
        same(streamed, in_memory(base, out, "float32"))


def test_a_stale_layer_count_is_refused_as_the_reader_refuses_it(folders, tmp_path):
    grown = tmp_path / "stale"
    llama_pro(folders["F32"], grown, after=[0])
    config = json.loads((grown / "config.json").read_text())
    (grown / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))
    with pytest.raises(ValueError, match="^config: num_hidden_layers") as streamed:
        certify_folders(folders["F32"], grown)
    with pytest.raises(ValueError) as loaded:
        hf.read(grown)
    assert str(streamed.value) == str(loaded.value)


def test_stream_reads_layers_as_read_only_views_of_the_stored_values(folders):
    s = Stream(folders["BF16"])
    assert s.dtype == np.float32 and s.stored_dtype == "BF16" and s.N == 3
    full = hf.load(folders["BF16"], dtype="float32")
    L, M = s.layer(1), full.layers[1]
    for kind in ("w_gate", "w_l1", "w_l2", "norm_mha"):
        a = getattr(L, kind)
        assert not a.flags.writeable and np.array_equal(a, getattr(M, kind))
    assert all(np.array_equal(a.w_k, b.w_k) and np.array_equal(a.w_q, b.w_q) for a, b in zip(L.heads, M.heads))
    assert np.array_equal(s.model_tensor("embed"), full.embed)
    assert np.array_equal(s.model_tensor("w_out"), full.w_out)
    assert s.model_tensor("pos") is None
    # the skeleton holds no values: every array has zero strides
    assert all(x == 0 for x in s.skeleton.layers[0].w_l1.strides)


def _memory_case(root):
    config = llama_config(h=128, p=512, N=12, H=4, G=2, d=32, V=512)
    base = write_base(root / "base", config, "BF16")
    grown = llama_pro(base, root / "grown", after=[1, 4, 6, 9], shard_bytes=2_000_000)
    layer = 4 * (4 * 128 * 32 * 2 + 2 * 128 * 64 + 3 * 128 * 512 + 2 * 128)  # float32 bytes of one layer
    table = 4 * 512 * 128
    return base, grown, layer, table


def test_peak_memory_is_about_two_layers(tmp_path):
    """NumPy allocations (tracemalloc) of the streamed audit stay under 3 layers, the four
    model-wide tables of both models and the two read buffers; loading both models would take
    28 layers and the tables."""
    base, grown, layer, table = _memory_case(tmp_path)
    bound = 3 * layer + 4 * table + 2 * CHUNK  # each reader keeps one chunk buffer
    whole = (12 + 16) * layer + 4 * table
    assert whole > 4 * bound
    tracemalloc.start()
    try:
        cert = certify_folders(base, grown)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cert.ok and [L["base"] for L in cert.layers] == [
        0,
        1,
        None,
        2,
        3,
        4,
        None,
        5,
        6,
        None,
        7,
        8,
        9,
        None,
        10,
        11,
    ]
    assert peak < bound, (peak, bound)
    # and the in-memory certification of the same folders does take the whole models
    tracemalloc.start()
    try:
        in_memory(base, grown, "float32")
        _, peak_loaded = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_loaded > whole


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "fpt_ref", "certify", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_cli_stream_says_what_was_checked(folders):
    r = run_cli(folders["F32"], folders["pro_F32"], "--stream", "--no-forward")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("blocks certified, forward not run: ") and "preserved" not in r.stdout.split("\n")[0]
    assert "the forward check was not run" in r.stdout
    r = run_cli(folders["F32"], folders["pro_F32"], "--stream", "--json")
    d = json.loads(r.stdout)
    assert d["preserved"] is True and d["blocks_certified"] is True and d["forward_run"] is True
    inputs = d["forward"]["inputs"]  # 2 sequences of 16 tokens: the folder's s_max (max_position_embeddings)
    assert inputs["sets"] == {"random": [2, 16]} and inputs["sampled"] is True and 1 < inputs["tokens_covered"] <= 32
    r = run_cli(folders["F32"], folders["pro_F32"], "--stream")
    assert r.returncode == 0 and r.stdout.startswith("preserved: ")
    assert "forward check streamed a layer at a time on a sample: 2 random sequences of 16 tokens" in r.stdout
    r = run_cli(folders["F32"], folders["pro_F32_down_left"], "--stream")
    assert r.returncode == 1 and r.stdout.startswith("not preserved: ")
    r = run_cli(folders["F32"], os.path.join(folders["F32"], "config.json"), "--stream")
    assert r.returncode == 2 and "is not a checkpoint folder" in r.stderr


def test_benchmark_runs_on_a_tiny_checkpoint():
    from fpt_ref.benchmarks.stream import report, run

    r = run("tiny")
    assert r["certify"]["ok"] and r["certify"]["layers"] == [0, 1, None, 2, 3, None]
    assert r["layers"] == [4, 6] and r["bytes"]["grown"] > r["bytes"]["base"] and "certify" in report(r)


def test_gpt2_folders_stream_as_they_load(tmp_path, monkeypatch):
    """GPT-2 (fused c_attn, learned positions, LayerNorm): the streamed audit is the in-memory one."""
    import fpt_ref

    config = {"model_type": "gpt2", "vocab_size": 40, "n_positions": 8, "n_embd": 16, "n_head": 2, "n_layer": 2}
    model = fpt_ref.init_model(
        h=16, p=64, n_heads=2, k=8, v=8, n_layers=2, vocab=40, max_seq=8, causal=True, eps=1e-5, arch="gpt2", seed=3
    )
    base = hf.save(model, tmp_path / "base", like=config, dtype="float32")
    good = hf.save(fpt_ref.add_layer(model, 1, seed=2), tmp_path / "good", like=config, dtype="float32")
    ts = hf.files.Tensors(good)
    tensors = {n: ts.get(n) for n in ts.names()}
    (name,) = [n for n in tensors if n.endswith("h.1.mlp.c_proj.weight")]
    tensors[name][0, 0] = 1.0  # the inserted layer writes to the stream: not the identity
    bad = tmp_path / "bad"
    bad.mkdir()
    write_checkpoint_tensors(bad, tensors, "F32", {"format": "pt"})
    (bad / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    streamed = certify_folders(base, bad)
    assert not streamed.ok
    same(streamed, in_memory(base, bad, "float32"))
    for grown_dir in (good,):
        streamed = certify_folders(base, grown_dir)
        assert streamed.ok and [L["base"] for L in streamed.layers] == [0, None, 1]
        same(streamed, in_memory(base, grown_dir, "float32"))
    s = Stream(base)
    assert set(s.kinds) == {"embed", "pos", "final_norm", "final_norm_b"}
    assert np.array_equal(s.layer(1).heads[1].w_k, hf.load(base, dtype="float32").layers[1].heads[1].w_k)
    # the streamed forward: learned positions, LayerNorm, the tied output read in chunks of 3 rows
    from fpt_ref.certify import stream_forward
    from fpt_ref.forward import trace
    from fpt_ref.tolerance import preservation_scale, tolerance_abs

    m = hf.load(base, dtype="float64")
    x = np.array([[0, 39, 5, 5, 7, 1, 2, 3], [9, 9, 9, 9, 9, 9, 9, 9]])  # [2, 8] the first and last ids
    tr = trace(m, x)
    S = preservation_scale(m, tr)
    for chunk in (stream_forward.CHUNK_BYTES, 3 * 8 * 16):
        monkeypatch.setattr(stream_forward, "CHUNK_BYTES", chunk)
        out, S_streamed = stream_forward.run_stream(Stream(base, dtype="float64"), x)
        assert np.max(np.abs(out - tr.output)) <= tolerance_abs(m, m, 8, S) and abs(S_streamed - S) <= 1e-12 * S
    assert stream_forward.forward_folders(base, good)["ok"] and not stream_forward.forward_folders(base, bad)["ok"]


def test_layers_stored_alike_are_compared_without_decoding(folders, monkeypatch):
    """A grown layer whose stored bytes are its base layer's is audited on the shapes alone: only
    the inserted layers are decoded (their identity audit needs the values)."""
    decoded = []
    real = Stream.layer

    def layer(self, n):
        decoded.append((os.path.basename(self.folder), n))
        return real(self, n)

    monkeypatch.setattr(Stream, "layer", layer)
    cert = certify_folders(folders["F32"], folders["pro_F32"])
    assert cert.ok and [L["base"] for L in cert.layers] == [0, None, 1, 2, None]
    assert sorted(set(decoded)) == [("pro_F32", 1), ("pro_F32", 4)]
    decoded.clear()
    cert = certify_folders(folders["F32"], folders["pro_F32_down_left"])  # the copy writes: decoded, rejected
    assert not cert.ok and ("pro_F32_down", 2) in decoded


def _rewritten(folder, out, change) -> str:
    """Folder ``folder`` written again to ``out`` in its stored dtype with ``change(tensors)`` applied."""
    from fpt_ref.hf.files import Tensors

    ts = Tensors(folder)
    tensors = {n: ts.get(n) for n in ts.names()}
    change(tensors)
    os.makedirs(out)
    write_checkpoint_tensors(out, tensors, ts.stored_dtype(), {"format": "pt"})
    with open(os.path.join(folder, "config.json")) as f, open(os.path.join(out, "config.json"), "w") as g:
        g.write(f.read())
    return str(out)


def test_base_tensors_held_as_corners_are_views_of_the_grown_layer(folders):
    """``Stream.layer_within``: each base tensor the grown layer stores as its leading corner is a
    view of the grown layer's decoded array (decoded once), with the values ``layer`` decodes."""
    base, grown = Stream(folders["BF16"]), Stream(folders["wide_BF16"])
    own = hf.load(folders["BF16"], dtype="float32").layers[1]
    L = base.layer_within(1, grown, 1)
    G = grown.layer(1)
    for kind in ("w_gate", "w_l1", "w_l2", "norm_mha", "norm_mlp"):
        a = getattr(L, kind)
        assert np.array_equal(a, getattr(own, kind)) and not a.flags.writeable
        assert np.shares_memory(a, getattr(G, kind)), kind
    # the new query heads join the two groups (2 -> 4 heads each): the grown q_proj and o_proj
    # interleave them, so those are decoded on their own; k_proj and v_proj are stored alike
    assert G.p == 64 and L.p == 48 and (G.E, G.G, L.E, L.G) == (8, 2, 4, 2)
    for e, H in enumerate(L.heads):
        g = (e // 2) * 4 + e % 2  # base head e's place in the grown layer
        assert np.array_equal(H.w_q, own.heads[e].w_q) and not np.shares_memory(H.w_q, G.heads[g].w_q)
        assert np.array_equal(H.w_k, own.heads[e].w_k) and np.shares_memory(H.w_k, G.heads[g].w_k)
        assert np.array_equal(H.w_o, own.heads[e].w_o)


@pytest.mark.parametrize(
    "where,bits",
    [
        ("model.layers.1.mlp.up_proj.weight", (3, 5)),  # inside the corner: a copied entry
        ("model.layers.2.mlp.down_proj.weight", (7, 47)),  # the corner's last column
        ("model.layers.0.self_attn.q_proj.weight", (0, 0)),  # the first entry
    ],
)
def test_a_changed_corner_is_decoded_on_its_own_and_rejected(folders, tmp_path, where, bits):
    """One bit of a base tensor's corner changed in the grown folder: that tensor is not taken as
    a view (it is decoded from the base's own file) and the copied block is reported, with the
    in-memory certification's findings."""

    def change(t):
        a = t[where].copy()
        a[bits] = np.nextafter(a[bits], np.inf, dtype=np.float32)  # one float32 ulp: BF16 keeps it only in F32
        t[where] = a

    grown = _rewritten(folders["wide_F32"], tmp_path / "g", change)
    streamed = certify_folders(folders["F32"], grown)
    assert not streamed.ok and "copied block differs" in streamed.first.reason
    same(streamed, in_memory(folders["F32"], grown, "float32"))
    n = int(where.split(".")[2])
    b, g = Stream(folders["F32"]), Stream(grown)
    L, G = b.layer_within(n, g, n), g.layer(n)
    kind = {"up_proj": "w_l1", "down_proj": "w_l2"}.get(where.split(".")[-2])
    if kind is not None:
        assert not np.shares_memory(getattr(L, kind), getattr(G, kind))
        assert np.array_equal(getattr(L, kind), getattr(hf.load(folders["F32"], dtype="float32").layers[n], kind))


def test_negative_zero_in_a_corner_is_a_different_bit_pattern(folders, tmp_path):
    """-0.0 where the base stores +0.0 is not the same stored bits: no view; the values still compare equal."""
    from fpt_ref.hf.files import Tensors

    name = "model.layers.0.mlp.up_proj.weight"
    zeroed = _rewritten(folders["F32"], tmp_path / "z", lambda t: t[name].__setitem__((0, 0), 0.0))

    def neg(t):
        a = t[name].copy()
        a[0, 0] = -0.0
        t[name] = a

    grown = _rewritten(zeroed, tmp_path / "n", neg)
    zb, gb = Tensors(zeroed), Tensors(grown)
    assert not zb.holds_corner(name, gb, name)
    assert zb.holds_corner(name, Tensors(zeroed), name)
    assert zb.holds_corner("model.norm.weight", gb, "model.norm.weight")


def test_streamed_forward_is_the_models_forward_a_layer_at_a_time(folders):
    """``run_stream``: the output of the folder's model, read a layer at a time, agrees with
    ``fpt_ref.forward`` of the loaded model within the bound for two computations of one model
    (``tolerance_abs(m, m, s, S)``: the streamed weights are views, the loaded ones copies, so the
    products may take other kernels), and its nested magnitudes give the same scale ``S``."""
    from fpt_ref.certify.stream_forward import run_stream
    from fpt_ref.forward import trace
    from fpt_ref.init import random_inputs
    from fpt_ref.tolerance import preservation_scale, tolerance_abs

    for st in ("F32", "BF16"):
        s = Stream(folders[st], dtype="float64")
        m = hf.load(folders[st], dtype="float64")
        x = random_inputs(m, 3, 16, seed=4)  # [3, 16] token ids
        out, S_streamed = run_stream(s, x)
        tr = trace(m, x)
        S = preservation_scale(m, tr)
        assert out.shape == tr.output.shape == (3, 16, 64)
        assert np.max(np.abs(out - tr.output)) <= tolerance_abs(m, m, 16, S)
        assert abs(S_streamed - S) <= 1e-12 * S


@pytest.mark.parametrize("st", ["F32", "BF16"])
def test_streamed_forward_check_passes_growth_and_catches_a_writing_unit(folders, tmp_path, st):
    """``forward_folders``: preserving growth (every layer widened; layers inserted) within the
    derived tolerance; a new MLP unit that writes to the stream (a new column of ``down_proj``
    nonzero) is not preserved, and ``certify_folders(forward=True)`` reports both findings."""
    from fpt_ref.certify.stream_forward import forward_folders

    for grown in (f"wide_{st}", f"pro_{st}"):
        res = forward_folders(folders[st], folders[grown])
        assert res["ok"] and res["max_abs"] <= res["tol_abs"] and res["reason"] is None, (grown, res)

    def write(t):
        a = t["model.layers.1.mlp.down_proj.weight"].copy()  # [h, p^]: columns 48.. are the new units
        a[:, 50] = 1.0
        t["model.layers.1.mlp.down_proj.weight"] = a

    bad = _rewritten(folders[f"wide_{st}"], tmp_path / "bad", write)
    res = forward_folders(folders[st], bad)
    assert not res["ok"] and res["max_abs"] > res["tol_abs"]
    cert = certify_folders(folders[st], bad, forward=True)
    assert not cert.ok and cert.forward is not None and not cert.forward["ok"]
    assert [f.tensor for f in cert.findings][-1] == "(forward)" and "outputs differ" in cert.findings[-1].reason
    assert any("down_proj" in f.tensor or "w_l2" in f.tensor for f in cert.findings[:-1])
    good = certify_folders(folders[st], folders[f"wide_{st}"], forward=True)
    assert good.ok and good.forward["ok"] and any("on a sample" in n for n in good.notes)

"""The streaming expansion of checkpoint folders (:mod:`fpt_ref.hf.stream_expand`, docs/hf.md).

A folder grown a layer at a time has the in-memory expansion's config and dimensions, is
certified against its input block by block and (float64 storage) by the forward check, is
refused before anything is written when the config cannot express it or when its stored dtype
rounds a scaled block, and holds a few layers at a time (tracemalloc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc

import pytest
from test_stream_certify import PLAN, in_memory, llama_config, write_base

import fpt_ref
from fpt_ref import hf
from fpt_ref.hf.files import CHUNK
from fpt_ref.hf.stream_expand import expand_stream
from fpt_ref.model import dims_summary


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("sx")
    return {st: write_base(root / st, llama_config(), st) for st in ("F32", "BF16")}


@pytest.mark.parametrize("st", ["F32", "BF16"])
@pytest.mark.parametrize(
    "plan",
    [
        PLAN,
        "add_layer at=1 count=2; mlp p=64; attention k=32; heads v=32; add_layer at=0",
        "add_heads count=4; add_layer at=3",
    ],
)
def test_streamed_expansion_is_the_in_memory_one_up_to_free_blocks(bases, tmp_path, st, plan):
    base = bases[st]
    streamed = tmp_path / "streamed"
    cert = expand_stream(base, plan, streamed, dtype="float64")
    assert cert.ok and cert.forward is None
    loaded = hf.expand(base, plan, tmp_path / "loaded", dtype="float64", max_seq=8)
    assert loaded
    with open(streamed / "config.json") as f, open(tmp_path / "loaded" / "config.json") as g:
        assert json.load(f) == json.load(g)
    a, b = hf.load(streamed, max_seq=8), hf.load(tmp_path / "loaded", max_seq=8)
    assert dims_summary(a) == dims_summary(b)
    # certified in memory (float64) and computing the base's function (float64 forward check)
    full = in_memory(base, streamed, "float64")
    assert full.ok, full.findings[:1]
    assert fpt_ref.verify(hf.load(base, max_seq=8), a)["ok"]


def test_a_scaled_block_rounded_in_bf16_is_refused_and_nothing_written(bases, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="^plan: the grown folder is not certified, nothing written: final_norm"):
        expand_stream(bases["BF16"], "hidden h=64", out)
    assert not out.exists()
    # a factor of 2 (k -> 4k) is exact in bfloat16: certified
    cert = expand_stream(bases["BF16"], "attention k=32; heads v=32", out)
    assert cert.ok and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_refusals_come_before_any_work(bases, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="^model: a llama config cannot express"):
        expand_stream(bases["F32"], "mlp p=64 layers=0", out)
    assert not out.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="^out_dir: "):
        expand_stream(bases["F32"], "add_layer at=1", tmp_path / "full")
    with pytest.raises(ValueError, match="^dtype: "):
        expand_stream(bases["F32"], "add_layer at=1", out, dtype="int8")


def test_peak_memory_is_a_few_layers(tmp_path):
    config = llama_config(h=128, p=512, N=12, H=4, G=2, d=32, V=512)
    base = write_base(tmp_path / "base", config, "BF16")
    layer64 = 8 * (4 * 128 * 32 * 2 + 2 * 128 * 64 + 3 * 128 * 640 + 2 * 128)  # a grown layer in float64
    table64 = 8 * 512 * 128
    bound = 4 * layer64 + 4 * table64 + 2 * CHUNK
    whole = 14 * layer64 + 2 * table64  # the grown model alone, in float64
    assert whole > 2 * bound
    tracemalloc.start()
    try:
        cert = expand_stream(base, "add_layer at=2 count=2; mlp p=640", tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cert.ok and len(cert.layers) == 14
    assert peak < bound, (peak, bound)


def test_cli_expand_stream(bases, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args):
        cmd = [sys.executable, "-m", "fpt_ref", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env)

    out = tmp_path / "out"
    r = run("expand", bases["F32"], "--plan", "add_layer at=1; mlp p=64", "-o", out, "--stream")
    assert r.returncode == 0, r.stderr
    assert "blocks certified, forward not run" in r.stdout and "1=identity" in r.stdout
    r = run("certify", bases["F32"], out)  # in memory, with the forward check
    assert r.returncode == 0 and r.stdout.startswith("preserved: "), r.stdout + r.stderr
    r = run("expand", bases["BF16"], "--plan", "hidden h=64", "-o", tmp_path / "bad", "--stream")
    assert r.returncode == 1 and r.stdout.startswith("NOT preserved: final_norm") and not (tmp_path / "bad").exists()
    r = run("expand", bases["F32"], "--plan", "add_layer at=1", "-o", out, "--stream", "--manifest")
    assert r.returncode == 2 and "--manifest: not available with --stream" in r.stderr


def test_unchanged_layers_are_copied_bit_for_bit(bases, tmp_path):
    """A layer no step touches keeps its stored bits (bf16 read and written without conversion)."""
    from fpt_ref.hf.files import Tensors

    out = tmp_path / "out"
    expand_stream(bases["BF16"], "add_layer at=1", out)
    a, b = Tensors(bases["BF16"]), Tensors(out)
    for name in a.names():
        moved = re.sub(r"layers\.([0-9]+)\.", lambda m: f"layers.{int(m.group(1)) + (m.group(1) != '0')}.", name)
        assert (a.raw(name) == b.raw(moved)).all() and b.entries[moved][1] == "BF16", name


def test_gpt2_folder_grows_a_layer_at_a_time(tmp_path):
    config = {"model_type": "gpt2", "vocab_size": 40, "n_positions": 8, "n_embd": 16, "n_head": 2, "n_layer": 2}
    model = fpt_ref.init_model(
        h=16, p=64, n_heads=2, k=8, v=8, n_layers=2, vocab=40, max_seq=8, causal=True, eps=1e-5, arch="gpt2", seed=3
    )
    base = hf.save(model, tmp_path / "base", like=config, dtype="float64")
    cert = expand_stream(base, "add_layer at=1; mlp p=96; hidden h=32; add_heads count=2", tmp_path / "o")
    assert cert.ok and [L["base"] for L in cert.layers] == [0, None, 1]
    assert fpt_ref.verify(hf.load(base), hf.load(tmp_path / "o"))["ok"]

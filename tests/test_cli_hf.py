"""``fpt-ref expand / verify / info`` on Hugging Face checkpoint folders (docs/hf.md).

The README's section "Grow and certify a Hugging Face model": a tiny random transformers
checkpoint is grown by the six-step plan into a folder that transformers loads with the
base's logits; a plan the config cannot express, or an output folder that is not ours, is
refused before any work, in one line, exit 2.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_cli as cli
from test_hf_load import LLAMA_LIKE, all_ids, hf_logits, make_checkpoint

pytest.importorskip("transformers")

# ratios of 4 (head size 8 -> 32, hidden 32 -> 128): the factors 2 and 1/2 are exact in float32 storage
SIX = "mlp p=64; add_heads count=4; heads v=32; attention k=32; hidden h=128; add_layer at=1"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    return make_checkpoint(str(folder), "llama", **dict(LLAMA_LIKE, num_key_value_heads=2))


def test_expand_a_checkpoint_folder_by_the_six_step_plan(llama, tmp_path, capsys):
    out = tmp_path / "grown"
    rc, text, err = cli(capsys, "expand", llama, "--plan", SIX, "-o", out)
    assert rc == 0, err
    assert "wrote" in text and "llama checkpoint folder" in text
    assert os.path.isfile(out / "config.json") and os.path.isfile(out / "model.safetensors")
    assert "note:" not in text  # every factor a power of two: nothing rounds in float32
    ids = all_ids(64, 16)
    base, grown = hf_logits(llama, ids), hf_logits(str(out), ids)
    # transformers runs the grown model in float64 with its float32 steps (norm, softmax, RoPE): docs/hf.md
    assert np.max(np.abs(grown - base)) <= 1e-5 * np.max(np.abs(base))
    rc, text, err = cli(capsys, "verify", llama, out)  # fpt_ref's float64 forward of both folders
    assert rc == 0, (text, err)
    rc, text, err = cli(capsys, "info", out)
    assert rc == 0 and "llama" in text


def test_float32_storage_of_a_sqrt2_scaling_is_reported_and_caught(llama, tmp_path, capsys):
    """Head size 8 -> 16 scales W_K by sqrt(2): stored in float32 each entry rounds again, so the
    folder is preserved only to float32 precision; expand says so, and verify (float64) refuses it;
    written in float64 it is preserved."""
    plan = "heads v=16; attention k=16"
    rc, text, _ = cli(capsys, "expand", llama, "--plan", plan, "-o", tmp_path / "f32")
    assert rc == 0 and "note: stored as float32" in text and "1.41421" in text
    rc, text, _ = cli(capsys, "verify", llama, tmp_path / "f32")
    assert rc == 1 and "NOT preserved" in text
    rc, text, _ = cli(capsys, "expand", llama, "--plan", plan, "--dtype", "float64", "-o", tmp_path / "f64")
    assert rc == 0 and "note:" not in text
    rc, text, _ = cli(capsys, "verify", llama, tmp_path / "f64")
    assert rc == 0, text


def test_expand_refuses_what_the_config_cannot_express_before_any_work(llama, tmp_path, capsys):
    out = tmp_path / "grown"
    rc, text, err = cli(capsys, "expand", llama, "--plan", "mlp p=64 layers=0", "-o", out)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "intermediate_size" in lines[0], err
    assert not out.exists() and text == ""


def test_expand_refuses_a_foreign_output_folder(llama, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, text, err = cli(capsys, "expand", llama, "--plan", "mlp p=64", "-o", out)
    assert rc == 2 and err.strip().startswith("fpt-ref: error: -o:") and len(err.strip().splitlines()) == 1, err
    assert (out / "notes.txt").read_text() == "keep me" and sorted(os.listdir(out)) == ["notes.txt"]


def test_stream_is_refused_for_a_model_file(tmp_path, capsys):
    import fpt_ref

    fpt_ref.save(fpt_ref.init_model(h=4, p=4, n_heads=1, k=2, v=2, n_layers=1, max_seq=3), tmp_path / "m.safetensors")
    rc, text, err = cli(
        capsys, "expand", tmp_path / "m.safetensors", "--plan", "mlp p=8", "--stream", "-o", tmp_path / "o"
    )
    assert rc == 2 and err.strip().startswith("fpt-ref: error: --stream: only for a checkpoint folder"), err
    assert not (tmp_path / "o").exists()

"""``fpt-ref certify`` on Hugging Face checkpoint folders (docs/certify.md, docs/hf.md).

A folder grown by ``fpt-ref expand`` and a LLaMA-Pro-style block expansion (copied layers
with ``o_proj`` and ``down_proj`` zeroed, ``num_hidden_layers`` updated) are certified; the
failures users of those tools report are not: ``num_hidden_layers`` left unchanged
(TencentARC/LLaMA-Pro#8), ``down_proj`` left in the copy (the Mixtral ``w2`` case), a stale
``layer_types``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import run_cli as cli
from safetensors.numpy import load_file, save_file
from test_hf_load import LLAMA_LIKE, make_checkpoint

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    return make_checkpoint(str(folder), "llama", **dict(LLAMA_LIKE, num_key_value_heads=2, num_hidden_layers=3))


def llama_pro(base, out, after, zero=("self_attn.o_proj", "mlp.down_proj"), update_config=True, config_changes=None):
    """LLaMA-Pro's block expansion: a copy of layer ``i`` inserted after it for each ``i`` in
    ``after``, with the tensors named in ``zero`` set to 0, the later layers renumbered."""
    tensors = load_file(os.path.join(base, "model.safetensors"))
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    n_layers = config["num_hidden_layers"]
    out_t, j = {}, 0
    layer_of = {}
    for i in range(n_layers):
        layer_of[i] = [j]
        j += 1
        if i in after:
            layer_of[i].append(j)
            j += 1
    for name, arr in tensors.items():
        if not name.startswith("model.layers."):
            out_t[name] = arr
            continue
        i, rest = name[len("model.layers.") :].split(".", 1)
        for k, target in enumerate(layer_of[int(i)]):
            copy = arr.copy()
            if k == 1 and any(rest.startswith(z) for z in zero):
                copy[...] = 0
            out_t[f"model.layers.{target}.{rest}"] = copy
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(base):
        if f not in ("model.safetensors", "config.json"):
            shutil.copy(os.path.join(base, f), out)
    save_file(out_t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    if update_config:
        config["num_hidden_layers"] = j
    config.update(config_changes or {})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    return out


def test_a_folder_grown_by_expand_is_certified(llama, tmp_path, capsys):
    plan = "mlp p=64; add_heads count=4; heads v=32; attention k=32; hidden h=128; add_layer at=1"
    assert cli(capsys, "expand", llama, "--plan", plan, "-o", tmp_path / "grown")[0] == 0
    rc, text, err = cli(capsys, "certify", llama, tmp_path / "grown")
    assert rc == 0, (text, err)


def test_llama_pro_identity_blocks_are_certified(llama, tmp_path, capsys):
    out = llama_pro(llama, tmp_path / "pro", after=(0, 2))
    rc, text, err = cli(capsys, "certify", llama, out, "--json")
    assert rc == 0, (text, err)
    report = json.loads(text)
    assert report["preserved"] is True


def test_num_hidden_layers_left_unchanged_is_inconsistent(llama, tmp_path, capsys):
    out = llama_pro(llama, tmp_path / "pro", after=(1,), update_config=False)
    rc, text, err = cli(capsys, "certify", llama, out)
    assert rc == 1, (text, err)
    assert "num_hidden_layers" in text + err


def test_a_copy_with_down_proj_left_is_not_certified(llama, tmp_path, capsys):
    out = llama_pro(llama, tmp_path / "pro", after=(1,), zero=("self_attn.o_proj",))
    rc, text, err = cli(capsys, "certify", llama, out)
    assert rc == 1, (text, err)
    assert "layers.2.w_l2" in text  # the copy's down_proj (fpt_ref's name of mlp.down_proj)


def test_a_stale_layer_types_is_inconsistent(llama, tmp_path, capsys):
    base = tmp_path / "typed"
    shutil.copytree(llama, base)
    with open(base / "config.json") as f:
        config = json.load(f)
    config["layer_types"] = ["full_attention"] * config["num_hidden_layers"]
    (base / "config.json").write_text(json.dumps(config))
    out = llama_pro(str(base), tmp_path / "pro", after=(0,))  # layer_types keeps 3 entries for 4 layers
    rc, text, err = cli(capsys, "certify", base, out)
    assert rc == 1, (text, err)
    assert "layer_types" in text + err

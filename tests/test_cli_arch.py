"""The command line on real architectures (docs/spec.md section 4): ``init --arch`` and its
block flags, the new plan keys through ``expand``, refusals, ``info`` and ``demo --arch``.

The commands run in-process (:func:`fpt_ref.cli.main`, the same parser and error handling as
``python -m fpt_ref``; tests/test_cli.py runs the subprocess end to end).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from conftest import run_cli as cli

import fpt_ref
from fpt_ref.blocks import PRESETS, Arch
from fpt_ref.cli import main
from fpt_ref.cli_args import flag_error

SIX_STEPS = "mlp p=24; add_heads count=2; heads v=6; attention k=6; hidden h=12; add_layer at=1"
TINY = ["--h", "8", "--p", "16", "--heads", "4", "--kv-heads", "2", "--k", "4", "--v", "4", "--layers", "2"]
TINY += ["--vocab", "20", "--max-seq", "6", "--eps", "1e-5", "--causal"]


def one_error_line(capsys, *args) -> str:
    rc, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_grows_by_the_six_step_plan_and_verifies(name, tmp_path, capsys):
    """issue "Done when": init --arch NAME, expand with all six expansions, verify exits 0."""
    base, big = tmp_path / "base.safetensors", tmp_path / "big.safetensors"
    rc, out, err = cli(capsys, "init", "--arch", name, *TINY, "-o", base)
    assert rc == 0, err
    rc, out, err = cli(capsys, "expand", base, "--plan", SIX_STEPS, "-o", big)
    assert rc == 0, err + out
    assert out.count(" yes\n") == 6, out  # one row per step, each preserved
    rc, out, err = cli(capsys, "verify", base, big)
    assert rc == 0 and ": preserved" in out, err + out

    a, b = fpt_ref.load(base), fpt_ref.load(big)
    preset = PRESETS[name]
    assert a.arch == preset
    if preset.positions == "rope":  # docs/spec.md 4.2: theta' = theta^(k^/k) = 10000^(6/4)
        assert b.arch == preset.replace(rope_theta=b.arch.rope_theta)
        assert b.arch.rope_theta == pytest.approx(1e6, rel=1e-14)
    else:
        assert b.arch == preset
    assert (b.h, b.N) == (12, 3)
    for layer in b.layers:
        assert (layer.p, layer.E, layer.G) == (24, 6, 2)
        assert {(hd.k, hd.v) for hd in layer.heads} == {(6, 6)}


#: (preset, flags, Arch field, value the flags give it): every field of Arch, each flag against its preset
OVERRIDES = [
    ("llama", ["--norm", "layer"], "norm", "layer"),
    ("llama", ["--mlp", "plain"], "mlp", "plain"),
    ("llama", ["--act", "gelu"], "act", "gelu"),
    ("llama", ["--mlp-bias"], "mlp_bias", True),
    ("gpt2", ["--no-mlp-bias"], "mlp_bias", False),
    ("llama", ["--positions", "none"], "positions", "none"),
    ("llama", ["--rope-theta", "500000"], "rope_theta", 500000.0),
    ("llama", ["--rope-layout", "interleaved"], "rope_layout", "interleaved"),
    ("llama", ["--qkv-bias"], "qkv_bias", True),
    ("qwen2", ["--no-qkv-bias"], "qkv_bias", False),
    ("llama", ["--o-bias"], "o_bias", True),
    ("gpt2", ["--no-o-bias"], "o_bias", False),
    ("llama", ["--no-final-norm"], "final_norm", False),
    ("paper", ["--final-norm"], "final_norm", True),
    ("llama", ["--tied"], "tied", True),
    ("gpt2", ["--no-tied"], "tied", False),
    ("paper", ["--act", "gelu_tanh"], "act", "gelu_tanh"),
    ("gpt2", ["--positions", "rope", "--rope-layout", "interleaved"], "positions", "rope"),
]


def test_every_arch_field_has_a_flag_tested_here():
    assert {field for _, _, field, _ in OVERRIDES} == {f.name for f in fields(Arch)}


@pytest.mark.parametrize("preset,flags,field,value", OVERRIDES)
def test_a_block_flag_overrides_its_presets_field_only(preset, flags, field, value, tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    assert getattr(PRESETS[preset], field) != value  # the flag changes something
    rc, out, err = cli(capsys, "init", "--arch", preset, *flags, *TINY, "-o", path)
    assert rc == 0, err
    arch = fpt_ref.load(path).arch
    assert getattr(arch, field) == value
    rest = {f.name for f in fields(Arch)} - {field, "rope_layout"}
    assert {n: getattr(arch, n) for n in rest} == {n: getattr(PRESETS[preset], n) for n in rest}


def test_the_preset_default_is_the_papers_model_and_the_file_stays_fpt_ref_1(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    rc, out, err = cli(capsys, "init", "--h", "4", "--p", "6", "--k", "2", "--v", "2", "--vocab", "5", "-o", path)
    assert rc == 0, err
    assert out.strip().endswith("parameters")  # no architecture note for the paper's model
    from fpt_ref.io import read_header

    meta, _ = read_header(str(path))
    assert meta["format"] == "fpt-ref/1" and fpt_ref.load(path).arch == Arch()


def test_a_tied_preset_has_one_output_per_token(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    rc, out, err = cli(capsys, "init", "--arch", "gpt2", *TINY, "-o", path)
    assert rc == 0, err
    m = fpt_ref.load(path)
    assert m.o == 20 and m.w_out is None


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--arch", "llama", "--k", "5"], "--k: RoPE rotates pairs of dimensions"),
        (["--heads", "4", "--kv-heads", "3"], "--kv-heads: 3 key/value heads do not divide the 4 heads"),
        (["--kv-heads", "0"], "argument --kv-heads: must be at least 1, got 0"),
        (["--arch", "gpt2"], "--vocab: a tied architecture"),
        (["--arch", "gpt2", "--vocab", "20", "--out-dim", "3"], "--out-dim: a tied output has one output per token"),
        (["--arch", "llama", "--rope-theta", "1"], "--rope-theta: must be > 1, got 1.0"),
        (["--arch", "llama", "--rope-theta", "inf"], "--rope-theta: "),
        (["--arch", "llama", "--rope-theta", "x"], "argument --rope-theta: invalid float value: 'x'"),
        (["--arch", "gpt2", "--vocab", "9", "--rope-theta", "500"], "--rope-theta: used only with --positions rope"),
        (["--arch", "paper", "--rope-layout", "interleaved"], "--rope-layout: used only with --positions rope"),
        (["--arch", "mistral"], "argument --arch: invalid choice: 'mistral'"),
        (["--norm", "batch"], "argument --norm: invalid choice: 'batch'"),
        (["--act", "tanh"], "argument --act: invalid choice: 'tanh'"),
        (["--arch", "llama", "--max-seq", "0"], "--max-seq: must be at least 1, got 0"),
        (["--heads", "0"], "--heads: must be at least 1, got 0"),
        (["--h", "0"], "--h: must be at least 1, got 0"),
        (["--eps", "nan"], "--eps: must be a finite float"),
    ],
)
def test_init_errors_name_the_flag(args, msg, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    line = one_error_line(capsys, "init", *args, "-o", out)
    assert msg in line, line
    assert not out.exists()


def test_library_errors_name_parameters_and_the_command_line_maps_them():
    with pytest.raises(ValueError, match=r"^kv_heads: ") as info:
        fpt_ref.init_model(h=4, p=4, n_heads=4, k=2, v=2, kv_heads=3, vocab=5)
    assert str(flag_error(info.value, {"kv_heads": "--kv-heads"})).startswith("--kv-heads: 3 key/value heads")
    unmapped = ValueError("plan: step 1 is refused")
    assert flag_error(unmapped, {"kv_heads": "--kv-heads"}) is unmapped
    assert flag_error(ValueError("no colon here"), {"no colon here": "--x"}).args == ("no colon here",)


@pytest.fixture
def llama(tmp_path, capsys):
    path = tmp_path / "llama.safetensors"
    rc, _, err = cli(capsys, "init", "--arch", "llama", *TINY, "-o", path)
    assert rc == 0, err
    return path


@pytest.mark.parametrize(
    "plan,msg",
    [
        ("mlp p=20; add_heads count=1", "step 2 (add_heads count=1) is refused: layer 0 is grouped (kv_heads=2 of 4"),
        ("add_heads count=3 groups=true", "count must be a multiple of 2 (whole groups)"),
        ("heads v=6 heads=0", "the selected heads must be whole groups of 2"),
        ("attention k=6 layers=0", "RoPE's base theta is shared"),
        ("attention k=7", "k must be even"),
        ("add_layer at=0 kv_heads=3", "kv_heads=3 does not divide the new layer's 4 heads"),
    ],
)
def test_a_refused_plan_step_is_one_line_and_nothing_is_written(llama, plan, msg, tmp_path, capsys):
    out = tmp_path / "big.safetensors"
    line = one_error_line(capsys, "expand", llama, "--plan", plan, "-o", out)
    assert line.startswith("fpt-ref: error: plan: step ") and msg in line, line
    assert not out.exists()


def test_refused_layernorm_tied_hidden_growth(tmp_path, capsys):
    base = tmp_path / "m.safetensors"
    rc, _, err = cli(capsys, "init", "--arch", "gpt2", "--no-final-norm", *TINY, "-o", base)
    assert rc == 0, err
    line = one_error_line(capsys, "expand", base, "--plan", "mlp p=20; hidden h=12", "-o", tmp_path / "x")
    assert "step 2 (hidden h=12) is refused: no exact hidden growth for LayerNorm with a tied output" in line


def test_gate_zero_set_needs_a_gated_mlp(tmp_path, capsys):
    base = tmp_path / "m.safetensors"
    rc, _, err = cli(capsys, "init", *TINY, "-o", base)
    assert rc == 0, err
    line = one_error_line(capsys, "expand", base, "--plan", "mlp p=20 zero=M_gate", "-o", tmp_path / "x")
    assert "zero=M_gate needs a gated MLP" in line


@pytest.mark.parametrize("zero,tensor", [("M_l2", "w_l2"), ("M_l1", "w_l1"), ("M_gate", "w_gate")])
def test_the_gated_mlp_zero_sets_from_the_command_line(llama, zero, tensor, tmp_path, capsys):
    """docs/spec.md 4.2: each of the three zero sets alone is exact; only its block is zero."""
    out = tmp_path / "big.safetensors"
    rc, text, err = cli(capsys, "expand", llama, "--plan", f"mlp p=24 zero={zero}", "--init", "normal", "-o", out)
    assert rc == 0, err + text
    b = fpt_ref.load(out)
    new = {  # the new blocks of each tensor (p = 16 -> 24)
        "w_l2": lambda L: L.w_l2[16:, :],
        "w_l1": lambda L: L.w_l1[:, 16:],
        "w_gate": lambda L: L.w_gate[:, 16:],
    }
    for L in b.layers:
        for name, block in new.items():
            assert np.all(block(L) == 0) == (name == tensor), (zero, name)
    rc, _, err = cli(capsys, "verify", llama, out)
    assert rc == 0, err


def test_group_keys_from_the_command_line(llama, tmp_path, capsys):
    out = tmp_path / "big.safetensors"
    plan = "add_heads count=2; add_heads count=3 groups=true; add_layer at=0 kv_heads=2 n_heads=4"
    rc, text, err = cli(capsys, "expand", llama, "--plan", plan, "-o", out)
    assert rc == 0, err + text
    b = fpt_ref.load(out)
    # one head per group: 4 -> 6 heads in 2 groups of 3; one whole group: 6 -> 9 heads in 3 groups;
    # the new layer at 0: 4 heads reading 2 key/value heads
    assert [(L.E, L.G) for L in b.layers] == [(4, 2), (9, 3), (9, 3)]
    rc, _, err = cli(capsys, "verify", llama, out)
    assert rc == 0, err


def test_info_shows_the_architecture_and_kv_heads(llama, capsys):
    rc, out, err = cli(capsys, "info", llama)
    assert rc == 0, err
    assert "arch llama: glu, silu, rope, no_mlp_bias, final_norm, gqa" in out
    assert "positions=rope rope_theta=10000.0 rope_layout=half" in out and "tied=false" in out
    assert "layer 1: p=16 E=4 kv_heads=2 heads" in out


def test_info_of_a_custom_architecture(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    rc, _, err = cli(capsys, "init", "--arch", "paper", "--norm", "layer", "--act", "silu", *TINY, "-o", path)
    assert rc == 0, err
    rc, out, err = cli(capsys, "info", path)
    assert "arch custom: layernorm, silu, gqa" in out and "kv_heads=2" in out


def test_info_of_the_papers_model(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    rc, _, err = cli(capsys, "init", "--h", "4", "--p", "6", "--k", "2", "--v", "2", "--vocab", "5", "-o", path)
    rc, out, err = cli(capsys, "info", path)
    assert "arch paper: the paper blocks" in out and "layer 0: p=6 E=2 kv_heads=2 heads" in out


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_demo_on_a_preset(name, capsys):
    rc, out, err = cli(capsys, "demo", "--arch", name)
    assert rc == 0, err
    assert f"arch {name}: " in out and "all 6 steps preserved the function: yes" in out


def test_every_block_flag_has_a_help_line(capsys):
    from fpt_ref.commands import _ARCH_HELP, arch_flags

    assert set(_ARCH_HELP) == {f.name for f in fields(Arch)}
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    text = capsys.readouterr().out
    for flag in list(arch_flags().values()) + ["--arch", "--kv-heads"]:
        assert flag in text, flag


def test_the_done_when_through_the_installed_entry_point(tmp_path):
    """The same three commands as ``python -m fpt_ref`` in subprocesses (one preset: each call ~1 s)."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "fpt_ref", *map(str, args)], capture_output=True, text=True, timeout=300
        )

    base, big = tmp_path / "base.safetensors", tmp_path / "big.safetensors"
    r = run("init", "--arch", "qwen2", *TINY, "-o", base)
    assert r.returncode == 0 and "(qwen2: glu, silu, rope, no_mlp_bias, bias, final_norm, gqa)" in r.stdout, r.stderr
    r = run("expand", base, "--plan", SIX_STEPS, "-o", big)
    assert r.returncode == 0, r.stderr + r.stdout
    r = run("verify", base, big)
    assert r.returncode == 0 and ": preserved" in r.stdout, r.stderr + r.stdout
    r = run("expand", base, "--plan", "add_heads count=1", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "is refused" in r.stderr

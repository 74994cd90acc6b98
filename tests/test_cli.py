"""The fpt-ref command line, end to end through subprocesses."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import types

import numpy as np
import pytest

import fpt_ref
from fpt_ref import cli, commands, plugins


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fpt_ref", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    path = d / "base.safetensors"
    r = run(
        "init",
        "--h",
        8,
        "--p",
        12,
        "--heads",
        2,
        "--k",
        4,
        "--v",
        4,
        "--layers",
        2,
        "--out-dim",
        5,
        "--max-seq",
        6,
        "--vocab",
        30,
        "--eps",
        1e-5,
        "--causal",
        "-o",
        path,
    )
    assert r.returncode == 0, r.stderr
    return path


def test_init_writes_the_requested_model(base):
    m = fpt_ref.load(base)
    assert (m.h, m.o, m.N, m.s_max, m.vocab, m.norm_eps, m.causal) == (8, 5, 2, 6, 30, 1e-5, True)
    assert [(L.p, L.E, L.heads[0].k, L.heads[0].v) for L in m.layers] == [(12, 2, 4, 4)] * 2


def test_expand_writes_a_model_satisfying_every_constraint(base, tmp_path):
    out = tmp_path / "big.safetensors"
    r = run("expand", base, "--plan", "mlp p=16 layers=0; attention k=6; hidden h=10", "--manifest", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "mlp p=16 layers=0" in r.stdout and "hidden h=10" in r.stdout
    assert "layers.0.w_l2[12:16, 0:8] zero" in r.stdout  # the manifest, before the hidden step
    a, b = fpt_ref.load(base), fpt_ref.load(out)
    assert b.h == 10 and b.layers[0].p == 16 and b.layers[1].p == 12
    assert b.norm_eps == 1e-5 * 8 / 10
    # docs/spec.md section 2, inspected tensor by tensor
    assert np.all(b.layers[0].w_l2[12:] == 0)
    for L in b.layers:
        assert np.all(L.w_l2[:, 8:] == 0) and np.all(L.b_l2[8:] == 0)
        for H in L.heads:
            assert np.all(H.w_k[:8, 4:] == 0) and np.all(H.w_o[:, 8:] == 0)
    assert np.all(b.embed[:, 8:] == 0) and np.all(b.pos[:, 8:] == 0)
    for La, Lb in zip(a.layers, b.layers):
        assert np.array_equal(Lb.norm_mha[:8], La.norm_mha * np.sqrt(8 / 10))
        for Ha, Hb in zip(La.heads, Lb.heads):
            assert np.array_equal(Hb.w_k[:8, :4], Ha.w_k * np.sqrt(6 / 4))
    r = run("verify", base, out)
    assert r.returncode == 0 and "preserved" in r.stdout


def test_expand_with_json_plan_and_zeros_init(base, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('[{"op": "add_heads", "count": 1, "layers": [1]}, {"op": "add_layer", "at": 0}]')
    out = tmp_path / "big.safetensors"
    r = run("expand", base, "--plan", plan, "--init", "zeros", "-o", out)
    assert r.returncode == 0, r.stderr
    b = fpt_ref.load(out)
    assert b.N == 3 and b.layers[2].E == 3 and np.all(b.layers[2].heads[2].w_q == 0)


def test_verify_detects_a_different_function(base, tmp_path):
    other = tmp_path / "other.safetensors"
    assert (
        run(
            "init",
            "--h",
            8,
            "--p",
            12,
            "--heads",
            2,
            "--k",
            4,
            "--v",
            4,
            "--out-dim",
            5,
            "--max-seq",
            6,
            "--vocab",
            30,
            "--eps",
            1e-5,
            "--causal",
            "--seed",
            1,
            "-o",
            other,
        ).returncode
        == 0
    )
    r = run("verify", base, other)
    assert r.returncode == 1 and "NOT preserved" in r.stdout


def test_info(base):
    r = run("info", base)
    assert r.returncode == 0
    assert "h=8 o=5 N=2" in r.stdout and "layer 1: p=12 E=2" in r.stdout and "params=" in r.stdout


def test_demo():
    r = run("demo")
    assert r.returncode == 0, r.stderr
    for step in ("mlp p=48", "add_heads count=2", "heads v=12", "attention k=12", "hidden h=24", "add_layer at=1"):
        assert step in r.stdout
    assert "all 6 steps preserved the function: yes" in r.stdout


@pytest.mark.parametrize(
    "args,msg",
    [
        (["expand", "missing.safetensors", "--plan", "mlp p=4", "-o", "x.safetensors"], "no such file"),
        (["expand", "BASE", "--plan", "mlp p=4", "-o", "x.safetensors"], "p: p=4 does not grow layer 0"),
        (["expand", "BASE", "--plan", "grow p=4", "-o", "x.safetensors"], "unknown step"),
        (["expand", "BASE", "--plan", "mlp p=20 layers=5", "-o", "x.safetensors"], "out of range"),
        (["verify", "BASE"], "the following arguments are required"),
        (["init", "--h", "x", "-o", "y"], "argument --h: expected an integer, got 'x'"),
        (["init", "--h", "0", "-o", "y"], "h: must be at least 1, got 0"),
        (["nosuchcommand"], "invalid choice"),
        (["info", "NOTAMODEL"], "not a readable safetensors file"),
        (["init", "-o", "no/such/folder/x.safetensors"], "-o: folder"),
        (["info", "/dev/null"], "/dev/null: not a regular file (a character device)"),
        (["info", "."], ": not a regular file (a directory)"),
        (
            ["expand", "/dev/null", "--plan", "mlp p=20", "-o", "x.safetensors"],
            "not a regular file (a character device)",
        ),
        (["init", "-o", "CHARDEV"], "-o: CHARDEV is a character device, not a regular file"),
        (["expand", "BASE", "--plan", "mlp p=20", "-o", "no/such/folder/x.safetensors"], "does not exist"),
        (["expand", "BASE", "--plan", '[{"op": [1]}]', "-o", "x.safetensors"], "unknown step"),
        (["init", "--seed", "-1", "-o", "x.safetensors"], "argument --seed: must be at least 0, got -1"),
        (["init", "--eps", "nan", "-o", "x.safetensors"], "--eps: must be a finite float"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(request, base, tmp_path, args, msg):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("hello")
    # an output that is a device is a node of the test's own (conftest char_device), never /dev/null
    dev = str(request.getfixturevalue("char_device")) if "CHARDEV" in args else None
    before = os.lstat(dev) if dev else None
    args = [str(base) if a == "BASE" else str(bad) if a == "NOTAMODEL" else dev if a == "CHARDEV" else a for a in args]
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg.replace("CHARDEV", dev or "CHARDEV") in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    if dev:
        after = os.lstat(dev)
        assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_version_prints_the_setup_cfg_version():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fpt-ref {cfg.get('metadata', 'version')}"


def test_json_plan_file_with_a_byte_order_mark(base, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_bytes("\ufeff".encode() + b'[{"op": "mlp", "p": 16}]')
    r = run("expand", base, "--plan", plan, "-o", tmp_path / "big.safetensors")
    assert r.returncode == 0, r.stderr
    assert fpt_ref.load(tmp_path / "big.safetensors").layers[0].p == 16


def test_nonfinite_weights_are_an_error_unless_allowed(base, tmp_path):
    from fpt_ref.model import from_tensors, to_tensors

    m = fpt_ref.load(base)
    t = {k: np.array(v) for k, v in to_tensors(m).items()}
    t["layers.0.w_l2"][0, :3] = [np.nan, np.inf, -np.inf]
    bad = tmp_path / "nan.safetensors"
    fpt_ref.save(from_tensors(t, m.norm_eps, m.causal), bad)
    r = run("expand", bad, "--plan", "mlp p=16", "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "tensor 'layers.0.w_l2' holds 3 non-finite values" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.safetensors").exists()
    r = run("expand", bad, "--plan", "mlp p=16", "--allow-nonfinite", "-o", tmp_path / "o.safetensors")
    assert "warning:" in r.stderr and "'layers.0.w_l2' holds 3 non-finite values" in r.stderr
    r = run("info", bad, "--nonfinite")
    assert r.returncode == 0 and "non-finite values: 3" in r.stdout and "layers.0.w_l2: 3" in r.stdout
    r = run("info", bad)  # the header only: dimensions, no values read
    assert r.returncode == 0 and "h=8 o=5 N=2" in r.stdout


def test_info_reads_only_the_header_of_a_large_file(tmp_path):
    import json
    import struct

    # a header declaring 8 GB of tensors over a sparse file: info answers from the header alone
    h, s, o = 1 << 16, 1 << 14, 1
    header = {
        "pos": {"dtype": "F64", "shape": [s, h], "data_offsets": [0, 8 * s * h]},
        "w_out": {"dtype": "F64", "shape": [h, o], "data_offsets": [8 * s * h, 8 * s * h + 8 * h * o]},
        "__metadata__": {"format": "fpt-ref/1"},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + 8 * s * h + 8 * h * o)
    r = run("info", path)
    assert r.returncode == 0, r.stderr
    assert f"h={h} o=1 N=0 s_max={s}" in r.stdout


# ---- plug-ins: sub-commands found through the fpt_ref.commands entry-point group ----------
CORE = ["init", "expand", "verify", "info", "demo"]
ALL_COMMANDS = CORE + ["bench", "certify", "draw", "prove", "vectors", "compare"]


def _commands(parser) -> list:
    sub = next(a for a in parser._actions if a.dest == "command")
    return list(sub.choices)


def test_help_lists_every_sub_command_in_a_stable_order():
    assert _commands(cli.build_parser()) == ALL_COMMANDS
    r = run("--help")
    assert r.returncode == 0 and "{" + ",".join(ALL_COMMANDS) + "}" in r.stdout.replace("\n", "").replace(" ", "")


def test_setup_cfg_declares_the_plug_ins(tmp_path):
    cfg = tmp_path / "setup.cfg"
    cfg.write_text(
        "[options.entry_points]\nconsole_scripts =\n    x = y:z\n# note\nfpt_ref.commands =\n"
        "    core = fpt_ref.commands:register\n    extra = some.module:register\n"
    )
    assert plugins._from_setup_cfg("fpt_ref.commands", str(cfg)) == [
        ("core", "fpt_ref.commands:register"),
        ("extra", "some.module:register"),
    ]
    assert plugins._from_setup_cfg("fpt_ref.other", str(cfg)) == []
    assert plugins._from_setup_cfg("fpt_ref.commands", str(tmp_path / "missing.cfg")) == []


def test_the_source_trees_setup_cfg_is_the_fallback(monkeypatch):
    monkeypatch.setattr(plugins, "_from_metadata", lambda group: [])
    names = [name for name, _ in plugins.entry_points(cli.COMMANDS)]
    assert names == ["bench", "certify", "draw", "prove", "vectors"]
    assert _commands(cli.build_parser()) == ALL_COMMANDS


def test_installed_metadata_comes_first_and_its_order_does_not_matter(monkeypatch):
    entries = [("vectors", "fpt_ref.vectors.cli:register"), ("draw", "fpt_ref.draw.cli:register")]
    monkeypatch.setattr(plugins, "_from_metadata", lambda group: entries)
    assert _commands(cli.build_parser()) == CORE + ["draw", "vectors", "compare"]
    entries.reverse()
    assert _commands(cli.build_parser()) == CORE + ["draw", "vectors", "compare"]


def test_a_plug_in_adds_its_command_and_a_missing_one_is_left_out(monkeypatch, capsys):
    mod = types.ModuleType("fpt_test_plugin")

    def register(subparsers):
        s = subparsers.add_parser("hello")
        s.set_defaults(func=lambda args: print("hello from a plug-in") or 0)

    mod.register = register
    monkeypatch.setitem(sys.modules, "fpt_test_plugin", mod)
    monkeypatch.setattr(
        plugins,
        "_from_metadata",
        lambda group: [
            ("x", "no_such_package.cli:register"),  # a part not installed
            ("hello", "fpt_test_plugin:register"),
            ("hello", "elsewhere:register"),  # a name given twice keeps the first
        ],
    )
    assert _commands(cli.build_parser()) == CORE + ["hello"]
    assert cli.main(["hello"]) == 0 and "hello from a plug-in" in capsys.readouterr().out


def test_a_plug_in_whose_import_fails_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "fpt_test_broken.py").write_text("import fpt_no_such_dependency\n\ndef register(s):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_from_metadata", lambda group: [("broken", "fpt_test_broken:register")])
    with pytest.raises(ModuleNotFoundError, match="fpt_no_such_dependency"):
        cli.build_parser()
    assert plugins.load("no_such_package.cli:register") is None  # a part not installed: left out
    with pytest.raises(ModuleNotFoundError):
        plugins.load("no_such_package.cli:register", optional=False)
    with pytest.raises(AttributeError):
        plugins.load("fpt_ref.commands:no_such_function")


def test_demo_prints_each_summary_plug_in(monkeypatch, capsys):
    monkeypatch.setattr(
        plugins,
        "_from_metadata",
        lambda group: (
            [("a", "fpt_test_summary:line"), ("gone", "no_such_package:line")]
            if group == commands.DEMO_SUMMARIES
            else []
        ),
    )
    mod = types.ModuleType("fpt_test_summary")
    mod.line = lambda: "summary from a plug-in"
    monkeypatch.setitem(sys.modules, "fpt_test_summary", mod)
    assert commands._demo_summaries() == ["summary from a plug-in"]


def test_int_arg_messages_name_no_parameter_twice():
    from fpt_ref.cli_args import Parser, UsageError, int_arg

    p = Parser(prog="t")
    p.add_argument("--n", type=int_arg(1, 5))
    assert p.parse_args(["--n", "5"]).n == 5
    for text, msg in (("0", "must be at least 1, got 0"), ("6", "must be at most 5, got 6"), ("1e3", "expected")):
        with pytest.raises(UsageError, match=f"^t: argument --n: {msg}"):
            p.parse_args(["--n", text])


def test_plug_ins_do_not_import_the_cli_module():
    code = (
        "import sys, fpt_ref.commands, fpt_ref.vectors.cli, fpt_ref.draw.cli, fpt_ref.benchmarks.cli; "
        "assert 'fpt_ref.cli' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

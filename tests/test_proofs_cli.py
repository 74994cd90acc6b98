"""`fpt-ref prove` end to end: the full set, user constraint sets (in-process), exit codes and output through a
subprocess, LaTeX."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import prove_all_result

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
NAMES = ["mlp", "add_heads", "heads", "attention", "hidden", "add_layer", "eps", "compose"]


def prove(*args, cwd=None):
    r = subprocess.run(
        [sys.executable, "-m", "fpt_ref", "prove", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=300
    )
    return r.returncode, r.stdout, r.stderr


def full_run():
    """``(rc, stdout, stderr, tex path, md path)`` of ``prove --all --json --latex --markdown``, run once
    per test session in the background (tests/proofs_job.py, started by tests/conftest.py;
    tests/test_proofs_blocks.py reads the same run)."""
    return prove_all_result()[:5]


@pytest.fixture(scope="module")
def full():
    return full_run()


def _rows(md_path):
    """{(theorem, level): (status, detail)} from the Markdown report's table."""
    rows = {}
    for line in open(md_path).read().splitlines():
        m = re.match(r"^\| (\S+) \| (.+?) \| (proved|refuted|not proved) \| ([\d.]+) \| (.*) \|$", line)
        if m:
            rows.setdefault((m.group(1), m.group(2).strip()), (m.group(3), m.group(5)))
    return rows


def _text_rows(out):
    """{(theorem, level): (status, detail)} from the text report."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S+)\s+(.+?)\s{2,}(proved|refuted|not proved)\s+([\d.]+) s  (.*)$", line)
        if m:
            rows[(m.group(1), m.group(2).strip())] = (m.group(3), m.group(5))
    return rows


def test_all_exit_code_and_every_level_proved(full):
    rc, out, err, _, md = full
    assert rc == 0, out + err
    rows = _rows(md)
    for name in NAMES:
        assert rows[(name, "symbolic sizes")][0] == "proved"
        mine = [v for k, v in rows.items() if k[0] == name and k[1].startswith("entries ")]
        assert len(mine) >= 2 and all(st == "proved" for st, _ in mine)
    for name in NAMES[:7]:
        assert rows[(name, "cross-check fpt_ref.forward")][0] == "proved"
        assert any(k[0] == name and k[1].startswith("entries causal SiLU") for k in rows)
    assert "all claims hold" in open(md).read()


def test_text_report_lines_and_totals():
    rc, out, err = prove("mlp", "heads")
    assert rc == 0, err
    rows = _text_rows(out)
    assert rows[("mlp", "symbolic sizes")][0] == "proved" and rows[("heads", "entries ReLU v3->5")][0] == "proved"
    assert re.search(r"^all \d+ claims hold", out, re.M)
    assert all(re.search(rf"^{n}\s+total\s+[\d.]+ s", out, re.M) for n in ("mlp", "heads"))


def test_all_proves_every_minimal_set_at_symbolic_sizes(full):
    lines = [ln for ln in open(full[4]).read().splitlines() if "| symbolic sizes, minimal set |" in ln]
    assert lines and all("| proved |" in ln for ln in lines)
    assert any(ln.startswith("| add_layer") and "g_MHA" in ln for ln in lines)
    assert any(ln.startswith("| attention") and "zero {M_Q} scale {W_K}" in ln for ln in lines)


def test_all_refutes_every_dropped_constraint(full):
    rows = _rows(full[4])
    drops = {k: v for k, v in rows.items() if k[1].startswith("drop ")}
    expected = {"mlp": 1, "add_heads": 1, "heads": 1, "attention": 2, "hidden": 6, "add_layer": 3, "eps": 7}
    for name, n in expected.items():
        mine = [v for k, v in drops.items() if k[0] == name]
        assert len(mine) == n, name
        assert all(st == "refuted" and "counterexample" in d and "difference" in d for st, d in mine)


def test_all_lists_the_minimal_sets(full):
    rows = _rows(full[4])
    mlp = rows[("mlp", "minimal sets (ReLU)")]
    assert mlp[0] == "proved" and "{M_l2}" in mlp[1] and "{M_l1, m_b_l1}" in mlp[1]
    assert rows[("mlp", "minimal sets (any activation f)")][1] == "{M_l2}"
    assert "{M_K}" in rows[("attention", "minimal sets (W_K scaled)")][1]
    assert "{M_Q}" in rows[("attention", "minimal sets (W_Q scaled)")][1]
    assert rows[("hidden", "minimal sets (g scaled)")][1] == "{M_I, M_P, M_O, M_l2, m_b_l2}"
    assert "{W_O, W_l2, b_l2}" in rows[("add_layer", "minimal sets")][1]


def test_latex_of_every_chain_renders(full):
    tex = open(full[3]).read()
    assert tex.startswith(r"\documentclass") and tex.rstrip().endswith(r"\end{document}")
    maths = re.findall(r"\\\[ (.*?) \\\]", tex)
    assert len(maths) > 40
    typeset = prove_all_result()[5]  # every distinct formula typeset by mathtext in the background job
    assert typeset["formulas"] == len(set(maths)) and typeset["failed"] == [], typeset["failed"][:3]
    assert "NOT checked" not in tex


def test_markdown_holds_chains_and_counterexample_values(full):
    md = open(full[4]).read()
    assert "| mlp | symbolic sizes | proved |" in md
    assert "## Counterexamples" in md and "values:" in md
    assert "[block product; ok]" in md and "M_l2 = 0" in md


@pytest.mark.parametrize(
    "args,code,word",
    [
        (["attention", "--zero", "M_Q", "--scale", "W_Q"], 0, "proved"),
        (["attention", "--zero", "none"], 1, "refuted"),
        (["mlp", "--zero", "M_l1,m_b_l1"], 0, "proved"),
        # valid sets without a hand-written chain: generated proofs
        (["attention", "--zero", "M_Q", "--scale", "W_K"], 0, "proved"),
        (["attention", "--zero", "M_K", "--scale", "W_Q"], 0, "proved"),
        (["add_heads", "--zero", "W_V_new"], 0, "proved"),
        (["heads", "--zero", "M_V"], 0, "proved"),
        (["add_layer", "--zero", "W_V,W_l1,b_l1,b_l2"], 0, "proved"),
        # invalid ones
        (["add_layer", "--zero", "W_V,W_l1,b_l1"], 1, "refuted"),
        (["heads", "--zero", "none"], 1, "refuted"),
        (["attention", "--zero", "M_K", "--scale", "none"], 1, "refuted"),
    ],
)
def test_user_constraint_sets(args, code, word, capsys):
    from fpt_ref.cli import main

    rc = main(["prove", *args])  # in-process (the console script's code path; subprocesses: tests below)
    out, err = capsys.readouterr()
    assert rc == code, out + err
    verdicts = [ln for ln in out.splitlines() if ln.startswith(args[0]) and " total " not in ln]
    verdicts = [ln for ln in verdicts if "cross-check" not in ln]  # the cross-check is about the paper's set
    assert verdicts and all(word in line for line in verdicts)
    if word == "refuted":
        assert "counterexample" in out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["nonsense"], "unknown theorem 'nonsense'"),
        (["mlp", "--zero", "M_X"], "M_X"),
        (["attention", "--scale", "W_V"], "W_V"),
        (["mlp", "heads", "--zero", "none"], "exactly one theorem"),
        ([], "at least one theorem"),
        (["mlp", "--size", "h"], "--size: expected NAME=VALUE"),
        (["mlp", "--size", "q=2"], "--size: unknown size 'q'"),
        (["mlp", "--size", "p_new=2"], "--size: p_new must exceed p"),
        (["compose", "--size", "h=3"], "--size: the composition runs at its own fixed sizes"),
        (["hidden", "--size", "k_new=5"], "--size: k_new is not grown by hidden"),
        (["hidden", "--size", "h=8"], "--size: h must be at most 7 to leave room for h_new"),
        (["mlp", "--size", "h=3", "--size", "h=4"], "--size: h given twice"),
        (["mlp/glu", "--size", "p=3"], "--size: the real-architecture claims run at their own sizes"),
        (["mlp/glu", "--zero", "M_l2"], "--zero/--scale: give exactly one theorem (not compose, not a real-arch"),
        (["mlp/nothing"], "unknown theorem 'mlp/nothing'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, needle, capsys):
    from fpt_ref.cli import main

    rc = main(["prove", *args])  # in-process: the same code path as the console script
    out, err = capsys.readouterr()
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_bad_usage_through_a_subprocess():
    rc, out, err = prove("mlp", "--zero", "M_l1,M_X")
    assert (
        rc == 2
        and err.strip() == "fpt-ref: error: --zero: unknown name(s) M_X for mlp; valid: M_l1, m_b_l1, M_l2 or 'none'"
    )


def test_list_blocks():
    rc, out, _ = prove("--list-blocks", "attention")
    assert rc == 0 and "M_Q" in out and "M_K" in out and "scale W_K" in out


def test_json_records():
    rc, out, err = prove("hidden", "--json")
    assert rc == 0, err
    recs = json.loads(out)
    keys = {"theorem", "zero", "scale", "level", "variant", "verdict", "sizes", "seconds"}
    assert all(keys <= set(r) for r in recs)
    assert {r["level"] for r in recs} >= {"symbolic", "entries", "crosscheck"}
    wide = [r for r in recs if r["level"] == "entries" and r["sizes"]["h_new"] - r["sizes"]["h"] >= 2]
    assert wide and all(r["verdict"] == "proved" for r in wide)
    assert all(isinstance(r["zero"], list) and isinstance(r["seconds"], float) for r in recs)


def test_all_json_has_a_wide_proved_entry_record_for_every_theorem(full):
    rc, out, err = full[:3]
    assert rc == 0, err
    recs = json.loads(out)
    from fpt_ref.proofs.variants import BY_NAME

    assert {r["theorem"] for r in recs} == set(NAMES) | set(BY_NAME)
    for name in NAMES:
        entries = [r for r in recs if r["theorem"] == name and r["level"] == "entries" and r["verdict"] == "proved"]
        grown = [
            r
            for r in entries
            if all(v - r["sizes"][k[: -len("_new")]] >= 2 for k, v in r["sizes"].items() if k.endswith("_new"))
        ]
        assert grown, name


def test_size_option_chooses_the_sizes():
    rc, out, err = prove("hidden", "--size", "h=2", "--size", "h_new=4", "--json")
    assert rc == 0, err
    recs = [r for r in json.loads(out) if r["level"] == "entries"]
    assert recs and all(r["sizes"]["h"] == 2 and r["sizes"]["h_new"] == 4 for r in recs)

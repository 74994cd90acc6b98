"""Execute the code of docs/tutorial.md, docs/solutions.md (the teaching materials) and the README.

Every ```python block of a file runs in order, in one namespace, in a fresh temporary
directory; a failing block fails the test with the file and line number of the block.
Blocks fenced as ```python proofs need the proof checker (`fpt-ref prove`): each
runs in its own namespace, and they are skipped, with that reason, only when the checker
is not functional (probed below), never otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import traceback

import pytest

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs")
FILES = ["tutorial.md", "solutions.md", os.path.join(os.pardir, "README.md")]  # README: its Python example
FENCE = re.compile(r"^(`{3,})([^`]*)$")  # CommonMark: no backtick in a backtick fence's info


def code_blocks(path: str) -> list:
    """``(line, info, code)`` of every fenced block whose language is ``python``."""
    blocks, cur, start, info, fence = [], None, 0, "", ""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.rstrip("\n")
            m = FENCE.match(text)
            if cur is None and m:
                cur, start, info, fence = [], n, m.group(2).strip(), m.group(1)
            elif cur is not None and text.strip().startswith(fence) and set(text.strip()) == {"`"}:
                if info.split()[:1] == ["python"]:
                    blocks.append((start, info, "".join(cur)))
                cur = None
            elif cur is not None:
                cur.append(line)
    assert cur is None, f"{path}: unclosed code block starting at line {start}"
    return blocks


def _is_proof(info: str) -> bool:
    return "proofs" in info.split()[1:]


def run_block(path, line, code, namespace):
    name = f"{os.path.basename(path)}:{line}"
    try:
        exec(compile(code, name, "exec"), namespace)
    except Exception:  # report the block, not just the exception
        pytest.fail(f"code block at {name} failed:\n{traceback.format_exc(limit=-3)}", pytrace=False)


_PROBE = {}


def proof_checker_status():
    """``None`` when `fpt-ref prove` works, else the reason it does not."""
    if "status" not in _PROBE:
        reason = None
        try:
            found = (
                importlib.util.find_spec("fpt_ref.proofs") is not None
                and importlib.util.find_spec("fpt_ref.proofs.cli") is not None
            )
        except (ImportError, ValueError):
            found = False
        if not found:
            reason = "proof checker not available (no fpt_ref.proofs.cli module)"
        else:
            from fpt_ref.cli import main

            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    rc = main(["prove", "--list-blocks", "mlp"])
            except Exception as exc:  # an unfinished checker may raise anything
                rc = f"{type(exc).__name__}: {exc}"
            if rc != 0 or "M_l2" not in out.getvalue():
                reason = f"proof checker not available (probe 'fpt-ref prove --list-blocks mlp' gave {rc!r})"
        _PROBE["status"] = reason
    return _PROBE["status"]


@pytest.mark.parametrize("fname", FILES)
def test_doc_code_runs(fname, tmp_path, monkeypatch):
    path = os.path.abspath(os.path.join(DOCS, fname))
    blocks = [b for b in code_blocks(path) if not _is_proof(b[1])]
    assert blocks, f"{fname}: no python blocks"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc__"}
    for line, _, code in blocks:
        run_block(path, line, code, namespace)


def _proof_blocks():
    out = []
    for fname in FILES:
        path = os.path.abspath(os.path.join(DOCS, fname))
        out += [
            pytest.param(path, line, code, id=f"{fname}:{line}")
            for line, info, code in code_blocks(path)
            if _is_proof(info)
        ]
    return out


@pytest.mark.parametrize("path,line,code", _proof_blocks())
def test_doc_proof_blocks(path, line, code, tmp_path, monkeypatch):
    reason = proof_checker_status()
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    run_block(path, line, code, {"__name__": "__doc__"})


def test_block_extraction_reports_line_numbers(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text(
        "text\n```python\na = 1\n```\n```bash\nls\n```\n```python proofs\nb = 2\n```\n"
        "```` ```python ```` is inline code, not a fence\n```\nplain\n```\n"
    )
    assert code_blocks(str(doc)) == [(2, "python", "a = 1\n"), (8, "python proofs", "b = 2\n")]
    with pytest.raises(pytest.fail.Exception, match="d.md:2"):
        run_block(str(doc), 2, "assert 1 == 2\n", {})

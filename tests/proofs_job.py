"""The one full `fpt-ref prove --all` run of a test session, started in the background.

``python tests/proofs_job.py DIR`` runs ``fpt-ref prove --all --json --latex DIR/proofs.tex
--markdown DIR/proofs.md`` (stdout, stderr and the exit status into DIR), then typesets every
distinct formula of the LaTeX report with matplotlib's mathtext and writes DIR/typeset.json:
``{"formulas": N, "failed": [[formula, error], ...]}``. tests/conftest.py starts it as soon as
the session has collected a test that reads it, so it runs on the second core while the
other tests run; tests/test_proofs_cli.py and tests/test_proofs_blocks.py wait for it and
assert on its files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


def main(out_dir: str) -> int:
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
    tex, md = os.path.join(out_dir, "proofs.tex"), os.path.join(out_dir, "proofs.md")
    r = subprocess.run(
        [sys.executable, "-m", "fpt_ref", "prove", "--all", "--json", "--latex", tex, "--markdown", md],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=900,
    )
    for name, text in (("stdout", r.stdout), ("stderr", r.stderr), ("rc", str(r.returncode))):
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
    failed, maths = [], []
    if os.path.exists(tex):
        from matplotlib.mathtext import MathTextParser

        maths = sorted(set(re.findall(r"\\\[ (.*?) \\\]", open(tex).read())))
        parser = MathTextParser("path")
        for m in maths:  # each distinct formula once (the chains share many)
            try:
                parser.parse(f"${m}$")  # raises ValueError on anything mathtext cannot typeset
            except Exception as exc:  # noqa: BLE001  (recorded, judged by the test)
                failed.append([m[:200], f"{type(exc).__name__}: {exc}"[:500]])
    with open(os.path.join(out_dir, "typeset.json.tmp"), "w") as f:
        json.dump({"formulas": len(maths), "failed": failed}, f)
    os.replace(os.path.join(out_dir, "typeset.json.tmp"), os.path.join(out_dir, "typeset.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))

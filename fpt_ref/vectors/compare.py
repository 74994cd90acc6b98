"""Compare another implementation's tensors with a reference case (``fpt-ref compare``).

For every reference tensor (``residual.0 .. residual.N``, ``output``) the file ``actual`` must
hold a tensor of the same name and shape, in float32 or float64. Each is measured with the
definitions of :func:`fpt_ref.tolerance.error_stats` (``max_abs``; ``max_rel = max_abs / max |ref|``;
``max_ulp = max_abs / ulp(max |ref|)``, the ulp taken in its dtype) and passes when
every element satisfies the case's tolerance for that dtype (``manifest.json``,
:func:`fpt_ref.tolerance.tolerances`). ``used`` is the largest ``|a - r| / (atol + rtol |r|)``
(pass when <= 1). Problems with ``actual``'s tensors (missing tensor, wrong shape or dtype, NaN or inf)
are reported by name as failures, never raised.

The argmax of ``output`` along the last axis must match the reference at every position
where the reference's top-2 gap is larger than the tolerance allows to close
(:func:`fpt_ref.tolerance.decidable`); other positions are reported as near-ties.

A case of a real architecture (docs/spec.md section 4) names the blocks it needs in the
report (:func:`fpt_ref.vectors.describe.arch_line`) and, when it fails, the conventions of the
blocks at the failing place (RoPE layout, grouped-query mapping, biases, tied output), so that
an implementation of the paper's model learns why it cannot pass.

Reading the files is :mod:`fpt_ref.vectors.files`; the report and its text form are
:mod:`fpt_ref.vectors.report` (whose text calls the compared file ACTUAL, as the command line does).
"""

from __future__ import annotations

import os

import numpy as np

from ..names import residual_index
from ..tolerance import DTYPES, decidable, error_stats, excess
from .describe import arch_line
from .files import read_actual, read_case
from .report import Report, TensorResult, format_report

__all__ = ["compare", "compare_tensor", "check_argmax", "Report", "TensorResult", "format_report"]


def compare_tensor(name: str, ref, actual, tol: dict) -> TensorResult:
    """Compare one tensor; ``tol`` maps dtype -> {"atol", "rtol"} for this tensor."""
    if actual is None:
        return TensorResult(name, "missing", f"{name}: missing from ACTUAL")
    if isinstance(actual, str):
        return TensorResult(name, "unreadable", f"{name}: {actual}")
    a = np.asarray(actual)
    dt = str(a.dtype)
    if a.dtype.kind != "f" or dt not in DTYPES or dt not in tol:
        return TensorResult(name, "dtype", f"{name}: dtype {dt} is not compared; write float32 or float64", dtype=dt)
    if a.shape != ref.shape:
        return TensorResult(
            name, "shape", f"{name}: shape {list(a.shape)} differs from the reference's {list(ref.shape)}", dtype=dt
        )
    t = tol[dt]
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        return TensorResult(
            name,
            "nonfinite",
            f"{name}: {n_nan} NaN and {n_inf} inf entries (first at {list(first)})",
            dtype=dt,
            worst=first,
            atol=t["atol"],
            rtol=t["rtol"],
        )
    st = error_stats(ref, a, dtype=a.dtype)  # ulps in ACTUAL's dtype
    ex = excess(ref, a, t["atol"], t["rtol"])  # same shape as ref
    used = float(ex.max()) if ex.size else 0.0
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(ex)), ex.shape)) if ex.size else None
    status = "pass" if used <= 1.0 else "fail"
    msg = ""
    if status == "fail":
        assert worst is not None  # used > 1 comes from an entry of ex
        msg = f"{name}: |actual - ref| exceeds atol + rtol |ref| by {used:.3g}x at {list(worst)}"
    return TensorResult(
        name, status, msg, dt, st["max_abs"], st["max_rel"], st["max_ulp"], used, worst, t["atol"], t["rtol"]
    )


def _order(names) -> list:
    index = {n: residual_index(n) for n in names}
    res = sorted((n for n, i in index.items() if i is not None), key=lambda n: index[n] or 0)
    return res + [n for n, i in index.items() if i is None]


def check_argmax(ref_out, result: TensorResult, actual, tol: dict) -> dict:
    """Argmax of ``output`` along the last axis; exact at decidable positions (module doc)."""
    if result.status not in ("pass", "fail"):
        return {"checked": False, "ok": False, "message": f"argmax not checked: {result.message}"}
    t = tol[result.dtype]
    dec = decidable(ref_out, t["atol"], t["rtol"])  # [b, s]
    want = np.argmax(ref_out, axis=-1)  # [b, s]
    got = np.argmax(np.asarray(actual), axis=-1)  # [b, s]
    wrong = (want != got) & dec
    mism = [
        {"index": [int(i) for i in ix], "reference": int(want[tuple(ix)]), "actual": int(got[tuple(ix)])}
        for ix in np.argwhere(wrong)
    ]
    ties = [[int(i) for i in ix] for ix in np.argwhere(~dec)]
    n = int(want.size)
    ok = not mism
    msg = (
        f"argmax(output, -1): {n - len(mism) - len(ties)}/{n - len(ties)} decidable positions match"
        f" ({len(ties)} near-ties exempt)"
    )
    if mism:
        m = mism[0]
        msg += f"; first mismatch at {m['index']}: reference {m['reference']}, actual {m['actual']}"
    return {"checked": True, "ok": ok, "positions": n, "mismatches": mism, "near_ties": ties, "message": msg}


def compare(case_dir, actual, require_residuals: bool = False) -> Report:
    """Compare the tensors in the file ``actual`` (.safetensors or .npz) with the case in ``case_dir``.

    ``output`` must be present. A residual stream ``residual.{n}`` that ``actual`` does not
    hold is reported as "not given" and does not fail the report (most frameworks expose the
    logits, not the residual streams), unless ``require_residuals``.

    Raises ``FileNotFoundError``/``ValueError`` only for a missing or unreadable case
    directory or ACTUAL file; every problem with ACTUAL's tensors is in the report.
    """
    man, ref = read_case(case_dir)
    act = read_actual(actual)
    names = _order(list(man["outputs"]))
    tol = man["tolerance"]
    results = []
    for name in names:
        per = {dt: tol[dt][name] for dt in DTYPES if dt in tol and name in tol[dt]}
        if residual_index(name) is not None and name not in act and not require_residuals:
            results.append(TensorResult(name, "not given", f"{name}: not given in ACTUAL"))
            continue
        results.append(compare_tensor(name, np.asarray(ref[name], dtype=np.float64), act.get(name), per))
    by_name = {r.name: r for r in results}
    out_per = {dt: tol[dt]["output"] for dt in DTYPES if dt in tol}
    argmax = check_argmax(np.asarray(ref["output"], dtype=np.float64), by_name["output"], act.get("output"), out_per)
    first = next(
        (r.name for r in results if residual_index(r.name) is not None and r.status not in ("pass", "not given")), None
    )
    extra = tuple(sorted(n for n in act if n not in by_name and n not in ("tokens", "inputs")))
    line = arch_line(man)
    conv = (man.get("model") or {}).get("conventions") if line else None
    return Report(
        man.get("case", os.fspath(case_dir)),
        man.get("description", ""),
        os.fspath(actual),
        tuple(results),
        argmax,
        first,
        extra,
        line,
        conv if isinstance(conv, dict) else None,
    )

"""Compare another implementation's tensors with a reference case (``fpt-ref compare``).

For every reference tensor (``residual.0 .. residual.N``, ``output``) the ACTUAL file must
hold a tensor of the same name and shape, in float32 or float64. Each is measured with the
definitions of :mod:`fpt_ref.metrics` (``max_abs``; ``max_rel = max_abs / max |ref|``;
``max_ulp = max_abs / ulp(max |ref|)``, the ulp taken in ACTUAL's dtype) and passes when
every element satisfies the case's tolerance for ACTUAL's dtype (``manifest.json``,
:mod:`fpt_ref.vectors.tolerance`). ``used`` is the largest ``|a - r| / (atol + rtol |r|)``
(pass when <= 1). Problems with ACTUAL (missing tensor, wrong shape or dtype, NaN or inf)
are reported by name as failures, never raised.

The argmax of ``output`` along the last axis must match the reference at every position
where the reference's top-2 gap is larger than the tolerance allows to close
(:func:`fpt_ref.vectors.tolerance.decidable`); other positions are reported as near-ties.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from ..metrics import error_stats
from .tolerance import DTYPES, decidable, excess

STATUSES = ("pass", "fail", "missing", "shape", "dtype", "nonfinite", "unreadable")


@dataclass(frozen=True)
class TensorResult:
    """The comparison of one tensor."""

    name: str
    status: str  # one of STATUSES
    message: str = ""
    dtype: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    max_ulp: float | None = None
    used: float | None = None  # max |a-r| / (atol + rtol |r|); <= 1 passes
    worst: tuple | None = None  # index of the element with the largest `used`
    atol: float | None = None
    rtol: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class Report:
    """The whole comparison of ACTUAL with a case."""

    case: str
    description: str
    actual: str
    tensors: tuple  # TensorResult, in order residual.0 .. residual.N, output
    argmax: dict  # checked, positions, matched, mismatches, near_ties, ok, message
    first_failing_residual: str | None
    extra: tuple  # names in ACTUAL that the case does not have (ignored)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors) and bool(self.argmax["ok"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tensors"] = [asdict(t) for t in self.tensors]
        d["ok"] = self.ok
        return d


# ---- reading ---------------------------------------------------------------------------


def read_case(case_dir) -> tuple:
    """``(manifest, reference)`` of a case directory; reference maps name -> float64 array."""
    case_dir = os.fspath(case_dir)
    if not os.path.isdir(case_dir):
        raise FileNotFoundError(f"CASE_DIR: {case_dir} is not a directory")
    man_path = os.path.join(case_dir, "manifest.json")
    out_path = os.path.join(case_dir, "outputs.safetensors")
    if not os.path.isfile(man_path) and os.path.isfile(os.path.join(case_dir, "index.json")):
        raise FileNotFoundError(
            f"CASE_DIR: {case_dir} is the top directory of the vectors; give one case "
            f"directory, e.g. {os.path.join(case_dir, 'tok-causal-eps', 'base')}"
        )
    for p in (man_path, out_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"CASE_DIR: {p} not found (not a case written by 'fpt-ref vectors')")
    try:
        with open(man_path, encoding="utf-8") as f:
            man = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"CASE_DIR: {man_path}: invalid JSON ({exc})") from None
    _check_manifest(man, man_path)
    from safetensors.numpy import load_file

    try:
        ref = load_file(out_path)
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise ValueError(f"CASE_DIR: {out_path}: not a readable safetensors file ({exc})") from None
    missing = [n for n in man["outputs"] if n not in ref]
    if missing:
        raise ValueError(f"CASE_DIR: {out_path} lacks {missing} listed in the manifest")
    return man, ref


def _check_manifest(man, man_path: str) -> None:
    """The parts of a manifest that compare reads: outputs (with ``output``) and numeric tolerances."""
    bad = f"CASE_DIR: {man_path} is not a vectors manifest"
    if (
        not isinstance(man, dict)
        or not isinstance(man.get("outputs"), (list, dict))
        or not isinstance(man.get("tolerance"), dict)
    ):
        raise ValueError(f"{bad} (needs 'outputs' and 'tolerance')")
    if "output" not in man["outputs"]:
        raise ValueError(f"{bad} ('outputs' lacks 'output')")
    for dt, per in man["tolerance"].items():
        if dt not in DTYPES:
            continue
        for name in man["outputs"]:
            t = per.get(name) if isinstance(per, dict) else None
            if not isinstance(t, dict) or not all(
                isinstance(t.get(k), (int, float)) and not isinstance(t.get(k), bool) for k in ("atol", "rtol")
            ):
                raise ValueError(f"{bad} (tolerance.{dt}.{name} needs numeric 'atol' and 'rtol')")


def _safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file (name -> {dtype, shape, ...}); {} if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return {}
            return json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return {}


def read_actual(path) -> dict:
    """Tensors of ACTUAL (.safetensors or .npz): name -> NumPy array, or a str saying why not.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    a readable safetensors/npz archive; a single unreadable tensor (e.g. bfloat16) becomes
    a string so that it is reported by name.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"ACTUAL: {path} is a directory; give a .safetensors or .npz file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ACTUAL: {path} not found")
    ext = os.path.splitext(path)[1].lower()
    out: dict = {}
    if ext == ".safetensors":
        from safetensors import safe_open

        header = _safetensors_header(path)
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    try:
                        out[name] = f.get_tensor(name)
                    except Exception as exc:  # e.g. BF16 has no NumPy dtype
                        dt = header.get(name, {}).get("dtype", "?")
                        out[name] = f"dtype {dt} cannot be read as a NumPy array ({exc})"
        except Exception as exc:
            raise ValueError(f"ACTUAL: {path}: not a readable safetensors file ({exc})") from None
    elif ext == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"ACTUAL: {path}: not a readable npz file ({exc})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"ACTUAL: {path}: holds a single .npy array, not an .npz archive of named tensors")
        try:
            with z:
                for name in z.files:
                    try:
                        out[name] = z[name]
                    except ValueError as exc:  # object arrays need pickle
                        out[name] = f"cannot be read without pickle ({exc})"
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"ACTUAL: {path}: not a readable npz file ({exc})") from None
    else:
        raise ValueError(f"ACTUAL: {path}: expected a .safetensors or .npz file, got extension {ext!r}")
    return out


# ---- comparing -------------------------------------------------------------------------


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
    st = error_stats(ref, a.astype(np.float64))
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    ulp = float(np.spacing(a.dtype.type(scale))) if scale > 0 else float(np.finfo(a.dtype).tiny)
    ex = excess(ref, a, t["atol"], t["rtol"])  # same shape as ref
    used = float(ex.max()) if ex.size else 0.0
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(ex)), ex.shape)) if ex.size else None
    status = "pass" if used <= 1.0 else "fail"
    msg = (
        ""
        if status == "pass"
        else (f"{name}: |actual - ref| exceeds atol + rtol |ref| by {used:.3g}x at {list(worst)}")
    )
    return TensorResult(
        name, status, msg, dt, st["max_abs"], st["max_rel"], st["max_abs"] / ulp, used, worst, t["atol"], t["rtol"]
    )


def _order(names) -> list:
    res = sorted((n for n in names if n.startswith("residual.")), key=lambda n: int(n.split(".", 1)[1]))
    return res + [n for n in names if not n.startswith("residual.")]


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


def compare(case_dir, actual_path) -> Report:
    """Compare ACTUAL (.safetensors or .npz) with the case in ``case_dir``.

    Raises ``FileNotFoundError``/``ValueError`` only for a missing or unreadable case
    directory or ACTUAL file; every problem with ACTUAL's tensors is in the report.
    """
    man, ref = read_case(case_dir)
    act = read_actual(actual_path)
    names = _order(list(man["outputs"]))
    tol = man["tolerance"]
    results = []
    for name in names:
        per = {dt: tol[dt][name] for dt in DTYPES if dt in tol and name in tol[dt]}
        results.append(compare_tensor(name, np.asarray(ref[name], dtype=np.float64), act.get(name), per))
    by_name = {r.name: r for r in results}
    out_per = {dt: tol[dt]["output"] for dt in DTYPES if dt in tol}
    argmax = check_argmax(np.asarray(ref["output"], dtype=np.float64), by_name["output"], act.get("output"), out_per)
    first = next((r.name for r in results if r.name.startswith("residual.") and not r.ok), None)
    extra = tuple(sorted(n for n in act if n not in by_name and n not in ("tokens", "inputs")))
    return Report(
        man.get("case", os.fspath(case_dir)),
        man.get("description", ""),
        os.fspath(actual_path),
        tuple(results),
        argmax,
        first,
        extra,
    )


def _fmt(x, spec) -> str:
    return "-" if x is None else format(x, spec)


def format_report(r: Report) -> str:
    """Human-readable report: one row per tensor, the argmax check, the first failing layer."""
    lines = [f"case {r.case}: {r.description}", f"actual {r.actual}"]
    head = f"{'tensor':<12} {'dtype':<8} {'max abs':>10} {'max rel':>10} {'max ulp':>10} {'tol used':>9}  status"
    lines += [head, "-" * len(head)]
    for t in r.tensors:
        lines.append(
            f"{t.name:<12} {t.dtype or '-':<8} {_fmt(t.max_abs, '10.3e')} {_fmt(t.max_rel, '10.3e')} "
            f"{_fmt(t.max_ulp, '10.4g')} {_fmt(t.used, '9.3g')}  {t.status.upper() if not t.ok else 'ok'}"
        )
    for t in r.tensors:
        if t.message:
            lines.append(f"  {t.message}")
    lines.append(r.argmax["message"])
    if r.first_failing_residual is not None:
        n = int(r.first_failing_residual.split(".")[1])
        where = "the input X_1 = I + P (embedding or positions)" if n == 0 else f"the output of layer {n - 1}"
        status = next(t.status for t in r.tensors if t.name == r.first_failing_residual)
        if status not in ("fail", "nonfinite"):  # missing, wrong shape or dtype: says nothing about where
            lines.append(
                f"first failing residual: {r.first_failing_residual} ({where}) is {status}; "
                f"fix ACTUAL before reading the layer"
            )
        elif n == 0:
            lines.append(f"first failing residual: {r.first_failing_residual} ({where}); look at the input")
        else:
            lines.append(
                f"first failing residual: {r.first_failing_residual} ({where}); "
                f"earlier residuals agree, so look at layer {n - 1}"
            )
    elif not r.tensors[-1].ok and r.tensors[-1].name == "output":
        lines.append("all residuals agree; output fails, so look at W_out")
    if r.extra:
        lines.append(f"ignored tensors in ACTUAL: {', '.join(r.extra)}")
    n_bad = sum(not t.ok for t in r.tensors)
    lines.append(
        "PASS"
        if r.ok
        else f"FAIL: {n_bad} of {len(r.tensors)} tensors failed" + ("" if r.argmax["ok"] else "; argmax check failed")
    )
    return "\n".join(lines)

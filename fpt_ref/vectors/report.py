"""The result of ``fpt-ref compare``: per-tensor results, the whole report and its text form."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..names import residual_index, residual_name

#: statuses of a tensor's comparison
STATUSES = ("pass", "fail", "missing", "shape", "dtype", "nonfinite", "unreadable", "not given")
#: statuses that do not fail a report: a residual stream ACTUAL does not hold (unless required)
NOT_FAILING = ("pass", "not given")


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
    argmax: dict  # checked, positions, mismatches, near_ties, ok, message
    first_failing_residual: str | None
    extra: tuple  # names in ACTUAL that the case does not have (ignored)
    architecture: str | None = None  # the blocks a case beyond the paper's model needs (describe.arch_line)
    conventions: dict | None = None  # manifest model.conventions of such a case (describe.conventions)

    @property
    def ok(self) -> bool:
        return all(t.status in NOT_FAILING for t in self.tensors) and bool(self.argmax["ok"])

    @property
    def not_given(self) -> tuple:
        """Names of the residual streams ACTUAL does not hold (not failures unless required)."""
        return tuple(t.name for t in self.tensors if t.status == "not given")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tensors"] = [asdict(t) for t in self.tensors]
        d["ok"] = self.ok
        return d


def _fmt(x, spec) -> str:
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format("-", f">{width}") if x is None else format(x, spec)


def format_report(r: Report) -> str:
    """Human-readable report: one row per tensor, the argmax check, the first failing layer."""
    lines = [f"case {r.case}: {r.description}", f"actual {r.actual}"]
    if r.architecture:
        lines.append(r.architecture)
    head = f"{'tensor':<12} {'dtype':<8} {'max abs':>10} {'max rel':>10} {'max ulp':>10} {'tol used':>9}  status"
    lines += [head, "-" * len(head)]
    for t in r.tensors:
        lines.append(
            f"{t.name:<12} {t.dtype or '-':<8} {_fmt(t.max_abs, '10.3e')} {_fmt(t.max_rel, '10.3e')} "
            f"{_fmt(t.max_ulp, '10.4g')} {_fmt(t.used, '9.3g')}  "
            + ("ok" if t.ok else t.status if t.status == "not given" else t.status.upper())
        )
    for t in r.tensors:
        if t.message and t.status != "not given":
            lines.append(f"  {t.message}")
    if r.not_given:
        lines.append(
            f"not given in ACTUAL (not checked): {', '.join(r.not_given)}; "
            "give residual streams to locate a failure by layer (or require them)"
        )
    lines.append(r.argmax["message"])
    given = {t.name: t.status for t in r.tensors if residual_index(t.name) is not None and t.status != "not given"}
    if r.first_failing_residual is not None:
        n = residual_index(r.first_failing_residual)
        assert n is not None  # compare sets it to a residual stream's name
        first = (r.conventions or {}).get("residual.0", "X_1 = I + P (embedding or positions)")
        where = f"the input {first}" if n == 0 else f"the output of layer {n - 1}"
        status = given[r.first_failing_residual]
        before = [i for i in map(residual_index, given) if i is not None and i < n]
        if status not in ("fail", "nonfinite"):  # missing, wrong shape or dtype: says nothing about where
            lines.append(
                f"first failing residual: {r.first_failing_residual} ({where}) is {status}; "
                f"fix ACTUAL before reading the layer"
            )
        elif n == 0:
            lines.append(f"first failing residual: {r.first_failing_residual} ({where}); look at the input")
        elif before:
            last = max(before)
            layers = f"layer {n - 1}" if last == n - 1 else f"layers {last} to {n - 1}"
            lines.append(
                f"first failing residual: {r.first_failing_residual} ({where}); {residual_name(last)} agrees, "
                f"so look at {layers}"
            )
        else:
            lines.append(
                f"first failing residual: {r.first_failing_residual} ({where}); no earlier residual was given, "
                f"so the input or layers 0 to {n - 1} may be at fault"
            )
    elif not r.tensors[-1].ok and r.tensors[-1].name == "output":
        n_res = sum(residual_index(t.name) is not None for t in r.tensors)
        if given and len(given) == n_res:
            lines.append("all residuals agree; output fails, so look at W_out")
        elif residual_name(n_res - 1) in given:
            lines.append(f"{residual_name(n_res - 1)} agrees; output fails, so look at W_out")
        else:
            lines.append("output fails; give the residual streams to locate the layer at fault")
    if r.architecture and not r.ok:
        lines.append(_arch_hint(r))
    if r.extra:
        lines.append(f"ignored tensors in ACTUAL: {', '.join(r.extra)}")
    n_bad = sum(t.status not in NOT_FAILING for t in r.tensors)
    lines.append(
        "PASS"
        if r.ok
        else f"FAIL: {n_bad} of {len(r.tensors) - len(r.not_given)} tensors failed"
        + ("" if r.argmax["ok"] else "; argmax check failed")
    )
    return "\n".join(lines)


def _arch_hint(r: Report) -> str:
    """Where to look when a case of a real architecture fails: the blocks it needs, by place."""
    conv = r.conventions or {}
    n = None if r.first_failing_residual is None else residual_index(r.first_failing_residual)
    if n is not None and n > 0:
        keys = [k for k in ("norm", "rope", "grouped_query", "biases", "mlp", "act") if k in conv]
        place = f"layer {n - 1}"
    elif n == 0:
        keys, place = ["residual.0"], "the input"
    else:
        keys, place = ["output"], "the output"
    spelled = [f"  {k}: {conv[k]}" for k in keys if k in conv]
    head = (
        f"this case is not the paper's model (an implementation of docs/spec.md section 1 alone cannot pass it): "
        f"check {place} against the case's conventions (manifest.json model.conventions)"
    )
    return "\n".join([head + (":" if spelled else "")] + spelled)

"""Expansion plans: parse them (text or JSON) and run them, checking preservation per step.

Text form: ``;``-separated (or newline-separated) steps ``NAME key=value ...``; list values
are comma-separated::

    mlp p=48 layers=0,1; add_heads count=2; heads v=12 layers=1 heads=0
    attention k=12; hidden h=24; add_layer at=1

JSON form: a list of objects ``{"op": NAME, key: value, ...}``. Layer and head indices refer
to the model as it is when that step runs.

The steps, their keys and the required keys are the paper's table, :data:`fpt_ref.paper.EXPANSIONS`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from . import expansions
from .checks import check_int, parse_int
from .model import Model, dims_summary, param_count
from .paper import EXPANSIONS
from .verify import verify_each

# name -> (function, {key: kind}); kind is one of fpt_ref.paper.KEY_KINDS: "int", "ints" (int or list), "str"
STEPS = {name: (getattr(expansions, row.function), dict(row.keys)) for name, row in EXPANSIONS.items()}
# name -> the keys a step must give
REQUIRED = {name: row.required for name, row in EXPANSIONS.items()}


class PlanError(ValueError):
    """A plan that cannot be parsed or names unknown steps or keys."""


@dataclass(frozen=True)
class Step:
    op: str
    args: dict = field(default_factory=dict)

    def __str__(self) -> str:
        def fmt(v):
            return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

        return " ".join([self.op] + [f"{k}={fmt(v)}" for k, v in self.args.items()])


def _as_int(key: str, value) -> int:
    return parse_int(key, value) if isinstance(value, str) else check_int(key, value)


def _convert(op: str, key: str, value):
    kinds = STEPS[op][1]
    if key not in kinds:
        raise PlanError(f"plan: step {op!r} has no key {key!r} (keys: {', '.join(kinds)})")
    kind = kinds[key]
    if kind == "str":
        return str(value)
    try:
        if isinstance(value, str):
            items = [_as_int(key, t) for t in value.split(",")]
        elif isinstance(value, (list, tuple)):
            items = [_as_int(key, t) for t in value]
        else:
            items = [_as_int(key, value)]
    except ValueError:
        what = "an integer" if kind == "int" else "a list of integers"
        raise PlanError(f"plan: step {op!r}: {key}={value!r} is not {what}") from None
    if kind == "int":
        if len(items) != 1:
            raise PlanError(f"plan: step {op!r}: {key} takes one integer, got {value!r}")
        return items[0]
    return items


def make_step(op: str, args: dict) -> Step:
    if not isinstance(op, str) or op not in STEPS:
        raise PlanError(f"plan: unknown step {op!r} (steps: {', '.join(STEPS)})")
    conv = {k: _convert(op, k, v) for k, v in args.items()}
    missing = [k for k in REQUIRED[op] if k not in conv]
    if missing:
        raise PlanError(f"plan: step {op!r} needs {', '.join(k + '=' for k in missing)}")
    return Step(op, conv)


def _no_duplicate_keys(pairs) -> dict:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise PlanError(f"plan: key {dup[0]!r} given twice in one JSON step")
    return dict(pairs)


def parse_plan(plan) -> list:
    """A list of :class:`Step` from text, a JSON file path, a JSON string or a list of dicts.

    Raises :class:`PlanError` (a ``ValueError`` starting ``plan:``) for an unknown step or
    key, a missing required key or a value of the wrong kind (keys: :data:`fpt_ref.paper.EXPANSIONS`).

    Examples
    --------
    >>> parse_plan("mlp p=12 layers=0,1; add_layer at=1")
    [Step(op='mlp', args={'p': 12, 'layers': [0, 1]}), Step(op='add_layer', args={'at': 1})]
    >>> parse_plan([{"op": "hidden", "h": 24}])
    [Step(op='hidden', args={'h': 24})]
    >>> parse_plan("hidden")
    Traceback (most recent call last):
    ...
    fpt_ref.plan.PlanError: plan: step 'hidden' needs h=
    """
    if isinstance(plan, (list, tuple)):
        steps = []
        for i, item in enumerate(plan):
            if isinstance(item, Step):
                steps.append(make_step(item.op, item.args))
                continue
            if not isinstance(item, dict) or "op" not in item:
                raise PlanError(f"plan: step {i} must be an object with an 'op' key, got {item!r}")
            args = {k: v for k, v in item.items() if k != "op"}
            steps.append(make_step(item["op"], args))
        if not steps:
            raise PlanError("plan: no steps")
        return steps
    if not isinstance(plan, str):
        raise PlanError(f"plan: expected text, a JSON file or a list of steps, got {type(plan).__name__}")
    text = plan
    if plan.strip().endswith(".json") or os.path.isfile(plan):
        try:
            with open(plan) as f:
                text = f.read()
        except OSError as exc:
            raise PlanError(f"plan: cannot read {plan!r}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        raise PlanError('plan: a JSON plan must be a list of steps, [{"op": ...}, ...]')
    if text.lstrip().startswith("["):
        try:
            return parse_plan(json.loads(text, object_pairs_hook=_no_duplicate_keys))
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan: invalid JSON: {exc}") from None
    steps = []
    for chunk in text.replace("\n", ";").split(";"):
        words = chunk.split()
        if not words:
            continue
        args = {}
        for w in words[1:]:
            if "=" not in w:
                raise PlanError(f"plan: in step {chunk.strip()!r}, {w!r} is not key=value")
            key, value = w.split("=", 1)
            if key in args:
                raise PlanError(f"plan: in step {chunk.strip()!r}, key {key!r} given twice")
            args[key] = value
        steps.append(make_step(words[0], args))
    if not steps:
        raise PlanError("plan: no steps")
    return steps


def apply_step(model: Model, step: Step, init="normal", seed: int | None = 0, return_manifest=False):
    """Apply one step; returns the new model (and manifest)."""
    fn = STEPS[step.op][0]
    return fn(model, **step.args, init=init, seed=seed, return_manifest=return_manifest)


@dataclass
class StepResult:
    step: Step
    model: Model
    manifest: list
    error: dict | None

    def row(self) -> dict:
        e = self.error or {}
        return {
            "step": str(self.step),
            "dims": dims_summary(self.model),
            "params": param_count(self.model),
            "max_abs": e.get("max_abs"),
            "max_ulp": e.get("max_ulp"),
            "tol_ulp": e.get("tol_ulp"),
            "ok": e.get("ok"),
        }


def run_plan(
    model: Model, plan, init="normal", seed: int = 0, check: bool = True, batch: int = 4, seq: int | None = None
) -> list:
    """Apply the plan's steps in order; return one :class:`StepResult` per step.

    Step ``i`` draws its free blocks from seed ``seed + i``. With ``check``, every step's
    model is compared with the *original* model on the same random inputs (so the error
    reported at step ``i`` is that of the whole composition so far).

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, heads=1, k=2, v=2, layers=2, out_dim=3, max_seq=4)
    >>> for result in run_plan(model, "mlp p=12; hidden h=6"):
    ...     print(result.step, result.model.h, result.model.layers[0].p, result.error["ok"])
    mlp p=12 4 12 True
    hidden h=6 6 12 True
    """
    steps = parse_plan(plan)
    results = []
    current = model
    for i, step in enumerate(steps):
        current, manifest = apply_step(current, step, init=init, seed=seed + i, return_manifest=True)
        results.append(StepResult(step, current, manifest, None))
    if check:  # the original model runs once for all the steps
        errors = verify_each(model, [r.model for r in results], batch=batch, seq=seq, seed=seed)
        for r, err in zip(results, errors):
            r.error = err
    return results

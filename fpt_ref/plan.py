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
from .deprecation import rename
from .model import Model, dims_summary, param_count
from .paper import EXPANSIONS
from .verify import verify_each

# name -> (function, {key: kind}); kind is one of fpt_ref.paper.KEY_KINDS: "int", "ints" (int or list), "str", "bool"
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
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise PlanError(f"plan: step {op!r}: {key}={value!r} is not true or false")
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


#: plan keys renamed: step -> {old key: new key}; the old key still works, with a DeprecationWarning
RENAMED_KEYS = {"add_layer": {"heads": "n_heads"}}


def make_step(op: str, args: dict) -> Step:
    if not isinstance(op, str) or op not in STEPS:
        raise PlanError(f"plan: unknown step {op!r} (steps: {', '.join(STEPS)})")
    twice = f"plan: step {op!r}: give {{new}}= only ({{old}}= is its deprecated name)"
    args = rename(args, RENAMED_KEYS.get(op, {}), f"plan: step {op!r}: key", 3, PlanError, twice)
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
    text = plan.lstrip("\ufeff")
    if plan.strip().endswith(".json") or os.path.isfile(plan):
        try:
            with open(plan, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the plan
                text = f.read()
        except OSError as exc:
            raise PlanError(f"plan: cannot read {plan!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise PlanError(f"plan: {plan!r} is not UTF-8 text") from None
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
            "blocks": None if e.get("audit") is None else ("ok" if e["audit"].ok else "NO"),
            "ok": e.get("ok"),
        }


def _added_bytes(d: dict, step: Step, itemsize: int) -> int:
    """Cheap upper bound on what a step with a ``count`` adds, computed before building its dims."""
    h, count = int(d["h"]), int(step.args.get("count", 1))
    kv = [tuple(x) for L in d["layers"] for x in L["heads"]] or [(1, 1)]
    k = int(step.args.get("k", max(a for a, _ in kv)))
    v = int(step.args.get("v", max(b for _, b in kv)))
    if step.op == "add_heads":
        per = max(1, len(d["layers"])) * (h * (2 * k + v) + v * h)
    else:  # add_layer
        p = int(step.args.get("p", max([L["p"] for L in d["layers"]] or [1])))
        e = int(step.args.get("n_heads", max([len(L["heads"]) for L in d["layers"]] or [1])))
        per = 4 * h + 2 * h * p + p + e * (h * (2 * k + v) + v * h)
    return count * per * itemsize


def refusal(arch, d: dict, op: str, args: dict) -> str | None:
    """Why step ``op`` with ``args`` has no exact recipe on a model of dimensions ``d`` and
    blocks ``arch`` (docs/spec.md section 4.2), or ``None``: checked for every step of a plan
    before any step runs. The expansions refuse the same cases themselves.
    """
    layers = d["layers"]
    chosen = _selected(len(layers), args.get("layers"))
    rope = arch.positions == "rope"
    if op == "mlp" and args.get("zero") == "M_gate" and arch.mlp != "gated":
        return "zero=M_gate needs a gated MLP; this model's MLP is plain"
    if op == "hidden" and arch.norm == "layer" and arch.tied and not arch.final_norm:
        return (
            "no exact hidden growth for LayerNorm with a tied output and no final norm (the mean-padded "
            "stream reaches the tied output rows)"
        )
    for n in chosen:
        L = layers[n]
        G, E = L.get("kv_heads"), len(L["heads"])
        if op == "add_heads":
            count = int(args.get("count", 1))
            if G is not None:
                unit = E // G if args.get("groups") else G
                if count % unit:
                    return (
                        f"layer {n} is grouped (kv_heads={G} of {E} heads): count must be a multiple of {unit} "
                        f"({'whole groups' if args.get('groups') else 'one new head per group'})"
                    )
            if rope and int(args.get("k", L["heads"][-1][0])) % 2:
                return "RoPE rotates pairs of dimensions: the new heads' k must be even"
        if op in ("heads", "attention") and G is not None and args.get("heads") is not None:
            r = E // G
            sel = set(_selected(E, args.get("heads")))
            if any(
                sel & set(range(g * r, g * r + r)) != set(range(g * r, g * r + r))
                for g in range(G)
                if sel & set(range(g * r, g * r + r))
            ):
                return f"layer {n} is grouped (kv_heads={G}): the selected heads must be whole groups of {r}"
    if op == "attention" and rope:
        every = len(chosen) == len(layers) and args.get("heads") is None
        sizes = {kv[0] for L in layers for kv in L["heads"]}
        if not every:
            return "RoPE's base theta is shared: grow the key size of every head of every layer at once"
        if len(sizes) != 1:
            return f"RoPE key growth needs one key size for every head; this model has {sorted(sizes)}"
        if int(args["k"]) % 2:
            return "RoPE rotates pairs of dimensions: k must be even"
    if op == "add_layer":
        ref_heads = int(args.get("n_heads", len(layers[0]["heads"]) if layers else 1))
        G = args.get("kv_heads")
        if G is not None and ref_heads % int(G):
            return f"kv_heads={G} does not divide the new layer's {ref_heads} heads"
        if rope and args.get("k") is not None and int(args["k"]) % 2:
            return "RoPE rotates pairs of dimensions: k must be even"
    return None


def _selected(n_items: int, sel) -> list:
    if sel is None:
        return list(range(n_items))
    sel = [sel] if isinstance(sel, int) else list(sel)
    return [i for i in sel if isinstance(i, int) and 0 <= i < n_items]


def plan_dims(model: Model, steps: list, available: int | None = None) -> list:
    """The dimensions (:func:`fpt_ref.model.dims`) after each step, computed without running it.

    With ``available`` (bytes), a step adding ``count`` heads or layers whose new tensors
    alone exceed it raises :class:`fpt_ref.memory.ResourceError` before its dimensions are
    listed one by one.
    """
    from .memory import ResourceError, dims_after, fmt_bytes, model_bytes
    from .model import dims

    itemsize = int(model.dtype.itemsize)
    out, d = [], dims(model)
    for i, step in enumerate(steps, start=1):
        args = dict(step.args)
        why = refusal(model.arch, d, step.op, args)
        if why is not None:
            raise PlanError(f"plan: step {i} ({step}) is refused: {why}")
        if available is not None and step.op in ("add_heads", "add_layer"):
            need = model_bytes(d, itemsize) + _added_bytes(d, step, itemsize)
            if need > available:
                raise ResourceError(
                    f"plan: step {i} ({step}) needs about {fmt_bytes(need)} of memory, {fmt_bytes(available)} "
                    "available; use smaller sizes (or a larger machine)"
                )
        if step.op == "add_layer":
            count = int(args.pop("count", 1))
            one = dims_after(d, "add_layer", args)
            at = min(max(int(args["at"]), 0), len(d["layers"]))
            layers = one["layers"][:at] + [one["layers"][at]] * count + one["layers"][at + 1 :]
            d = dict(one, layers=layers, N=len(layers))
        else:
            d = dims_after(d, step.op, args)
        out.append(d)
    return out


def plan_bytes(
    model: Model, steps: list, check: bool = True, batch: int = 4, seq: int | None = None, available: int | None = None
) -> tuple:
    """Upper estimates of the memory a plan holds, from dimensions alone (bytes).

    Returns ``(per_step, checking)``. Step ``i`` holds the original model and every model
    so far (they are all returned) and the new model twice (its new blocks and the tensors
    assembled from them). The check (``check``; else ``checking`` is 0) holds every model
    and one forward pass of the largest on ``batch`` sequences of ``seq`` positions
    (:func:`fpt_ref.memory.forward_bytes`) with its inputs.
    """
    from .memory import forward_bytes, model_bytes
    from .model import dims

    itemsize = int(model.dtype.itemsize)
    seq_ = model.s_max if seq is None else int(seq)
    chain = [dims(model)] + plan_dims(model, steps, available)
    held = model_bytes(chain[0], itemsize)
    per_step = []
    for d in chain[1:]:
        new = model_bytes(d, itemsize)
        per_step.append(held + 2 * new)
        held += new
    checking = 0
    if check:
        checking = held + max(
            forward_bytes(d, batch, seq_, itemsize) + 2 * int(batch) * seq_ * int(d["h"]) * itemsize for d in chain
        )
    return per_step, checking


def run_plan(
    model: Model,
    plan,
    init="normal",
    seed: int | None = 0,
    check: bool = True,
    batch: int = 4,
    seq: int | None = None,
    scale: float = 1.0,
) -> list:
    """Apply the plan's steps in order; return one :class:`StepResult` per step.

    Step ``i`` draws its free blocks from seed ``seed + i``; ``seed=None`` draws every step
    from fresh, independent entropy (not reproducible). With ``check``, every step's
    model is compared with the *original* model by :func:`fpt_ref.verify_each` (every token
    id and position, plus ``batch`` random sequences of ``seq`` positions drawn from ``seed``,
    from seed 0 when ``seed`` is ``None``; real inputs with standard deviation ``scale``), so the error reported at step ``i`` is that of the
    whole composition so far; and each step's manifest is audited block by block against
    the model before it (:func:`fpt_ref.audit.audit_step`, with the step's expansion: bit-exact
    blocks and a proved constraint set). ``error`` then holds the check's figures, ``audit``
    (the :class:`~fpt_ref.audit.AuditReport`) and ``ok``, true when both passed.

    Before the first step runs, the memory of every step is computed from the dimensions
    (:func:`plan_bytes`); a step that would need more than is available raises
    :class:`fpt_ref.memory.ResourceError` (a ``ValueError``) naming the step and both figures.

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> for result in run_plan(model, "mlp p=12; hidden h=6"):
    ...     print(result.step, result.model.h, result.model.layers[0].p, result.error["ok"])
    mlp p=12 4 12 True
    hidden h=6 6 12 True
    """
    from .memory import available_bytes, require

    steps = parse_plan(plan)
    if seed is not None:
        seed = check_int("seed", seed, 0)
    batch = check_int("batch", batch, 1)
    if seq is not None:
        seq = check_int("seq", seq, 1)
    avail = available_bytes()
    per_step, checking = plan_bytes(model, steps, check, batch, seq, avail)
    for i, (step, need) in enumerate(zip(steps, per_step), start=1):
        require(need, f"plan: step {i} ({step})", avail)
    require(checking, f"plan: checking the {len(steps)} steps on batch={batch} sequences", avail)
    results = []
    current = model
    for i, step in enumerate(steps):
        current, manifest = apply_step(
            current, step, init=init, seed=None if seed is None else seed + i, return_manifest=True
        )
        results.append(StepResult(step, current, manifest, None))
    if check:  # the original model runs once for all the steps
        from .audit import audit_step

        errors = verify_each(
            model, [r.model for r in results], batch=batch, seq=seq, seed=0 if seed is None else seed, scale=scale
        )
        before = [model] + [r.model for r in results[:-1]]
        for r, err, prev in zip(results, errors, before):
            rep = audit_step(prev, r.model, r.manifest, r.step.op)
            err["audit"] = rep
            err["ok"] = bool(err["ok"] and rep.ok)
            r.error = err
    return results

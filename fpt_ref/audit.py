"""Block-level audit: does a grown model hold, bit for bit, what its manifest claims?

A manifest (:class:`fpt_ref.expansions.Block` records, one expansion step) tiles every
new or changed tensor of the grown model into blocks with a role. :func:`audit_step`
checks each claim against the tensors themselves, with exact comparisons only:

- every changed tensor is tiled exactly once by its blocks, along one axis;
- ``copied`` blocks are bit-equal to the base tensor's block they come from;
- ``scaled`` blocks are bit-equal to ``base block * factor`` computed in the model's dtype,
  the product the expansion itself forms (and the factor is reported with its rounding in
  that dtype);
- ``zero`` blocks are exactly zero;
- ``free`` blocks are finite (an ``inf`` times a zero block is NaN, not zero);
- a tensor the manifest does not mention is bit-equal to its base tensor;
- every base tensor is found in the grown model, and the options (``causal``, and
  ``norm_eps`` rescaled by ``h/h^`` exactly as the hidden expansion computes it) agree;
- when the step's expansion is named, the zero blocks include the paper's constraint set
  (:mod:`fpt_ref.paper`).

Where a base block sits is derived, not trusted: within a tensor, the ``copied`` and
``scaled`` blocks, in order along the axis the tensor grew, reassemble the base tensor;
grown layers and heads whose every tensor is entirely new are the added ones, and the
others map in order onto the base's. The audit never runs the model: it certifies the
blocks, and :func:`fpt_ref.verify` certifies the function on inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .model import Model, named_tensors
from .names import parse_name, tensor_name
from .xp import to_numpy


@dataclass
class Finding:
    """One failed check: the tensor (and block) concerned and why."""

    tensor: str
    reason: str
    block: str = ""

    def __str__(self) -> str:
        where = f"{self.tensor}{self.block}"
        return f"{where}: {self.reason}"


@dataclass
class AuditReport:
    """The outcome of :func:`audit_step`.

    ``ok`` is true when every check passed; ``findings`` lists the failures in the order
    the tensors were checked (``first`` is the first of them); ``blocks`` counts the
    blocks checked and ``tensors`` the tensors compared; ``notes`` hold facts worth
    reporting that are not failures (e.g. a scaling factor rounded in the model's dtype).
    """

    ok: bool = True
    findings: list = field(default_factory=list)
    blocks: int = 0
    tensors: int = 0
    notes: list = field(default_factory=list)
    scaled_rounding: float = 0.0  # max ulps of a scaled block's entries from the exact product

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def fail(self, tensor: str, reason: str, block: str = "") -> None:
        self.ok = False
        self.findings.append(Finding(tensor, reason, block))

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "blocks": self.blocks,
            "tensors": self.tensors,
            "findings": [{"tensor": f.tensor, "block": f.block, "reason": f.reason} for f in self.findings],
            "notes": list(self.notes),
            "scaled_rounding": self.scaled_rounding,
        }


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8))) if a.size else True


def _index_str(index) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in index) + "]"


def _split(name: str):
    """``(layer, head, kind)`` of a tensor name (``None`` where the name has no such part)."""
    kind, n, e = parse_name(name)
    return n, e, kind


def _join(n, e, kind) -> str:
    return tensor_name(kind, n, e)


def _entirely_new(names, by_tensor, shapes) -> bool:
    """Every tensor in ``names`` is one whole block with a role of a new block."""
    for t in names:
        blocks = by_tensor.get(t, [])
        if len(blocks) != 1 or blocks[0].role not in ("zero", "free"):
            return False
        if tuple(b - a for a, b in blocks[0].index) != shapes[t] or any(a != 0 for a, _ in blocks[0].index):
            return False
    return bool(names)


def correspondence(base: Model, grown: Model, manifest: list) -> dict:
    """``{grown tensor name: base tensor name or None}``: where each grown tensor comes from.

    Layers (and, within a layer, heads) of ``grown`` whose every tensor is entirely new in
    ``manifest`` map to ``None``; the others map in order onto ``base``'s. Raises
    ``ValueError`` naming ``grown`` when the counts cannot match.
    """
    g_names = list(named_tensors(grown))
    shapes = {t: tuple(int(d) for d in a.shape) for t, a in named_tensors(grown).items()}
    by_tensor: dict = {}
    for blk in manifest:
        by_tensor.setdefault(blk.tensor, []).append(blk)
    new_layers = [
        n for n in range(grown.N) if _entirely_new([t for t in g_names if _split(t)[0] == n], by_tensor, shapes)
    ]
    if grown.N - len(new_layers) != base.N:
        raise ValueError(
            f"grown: {grown.N} layers of which {len(new_layers)} are new, but the base has {base.N}; "
            "the manifest does not account for the layers"
        )
    layer_map = dict(zip([n for n in range(grown.N) if n not in new_layers], range(base.N)))
    out: dict = {}
    for n_g in range(grown.N):
        if n_g not in layer_map:
            continue
        n_b = layer_map[n_g]
        E_g, E_b = grown.layers[n_g].E, base.layers[n_b].E
        new_heads = [
            e for e in range(E_g) if _entirely_new([t for t in g_names if _split(t)[:2] == (n_g, e)], by_tensor, shapes)
        ]
        if E_g - len(new_heads) != E_b:
            raise ValueError(
                f"grown: layer {n_g} has {E_g} heads of which {len(new_heads)} are new, but base layer {n_b} "
                f"has {E_b}; the manifest does not account for the heads"
            )
        head_map = dict(zip([e for e in range(E_g) if e not in new_heads], range(E_b)))
        for t in g_names:
            n, e, rest = _split(t)
            if n != n_g:
                continue
            if e is None:
                out[t] = _join(n_b, None, rest)
            else:
                out[t] = _join(n_b, head_map[e], rest) if e in head_map else None
    for t in g_names:
        n, _, _ = _split(t)
        if n is None:
            out[t] = t
        elif n not in layer_map:
            out[t] = None
    return out


def _axis_of(blocks, shape) -> int | None:
    """The one axis along which ``blocks`` tile a tensor of ``shape`` (``None`` if they do not)."""
    if len(blocks) == 1:
        full = all(a == 0 and b == d for (a, b), d in zip(blocks[0].index, shape))
        return 0 if full and len(blocks[0].index) == len(shape) else None
    axes = {ax for blk in blocks for ax, ((a, b), d) in enumerate(zip(blk.index, shape)) if (a, b) != (0, d)}
    if len(axes) != 1:
        return None
    ax = axes.pop()
    spans = sorted(blk.index[ax] for blk in blocks)
    pos = 0
    for a, b in spans:
        if a != pos or b <= a:
            return None
        pos = b
    return ax if pos == shape[ax] else None


def audit_step(base: Model, grown: Model, manifest: list, op: str | None = None) -> AuditReport:
    """Check every block of one expansion step bit for bit (see the module docstring).

    Parameters
    ----------
    base : Model
        The model before the step.
    grown : Model
        The model after it.
    manifest : list of Block
        The step's manifest (``return_manifest=True`` of an expansion, or read from a file).
    op : str, optional
        The expansion's name (:data:`fpt_ref.paper.NAMES`): also check that the zero blocks
        include the paper's constraint set, when the manifest names its blocks.

    Returns
    -------
    AuditReport
    """
    rep = AuditReport()
    g_t = {t: to_numpy(a) for t, a in named_tensors(grown).items()}
    b_t = {t: to_numpy(a) for t, a in named_tensors(base).items()}
    by_tensor: dict = {}
    for blk in manifest:
        by_tensor.setdefault(blk.tensor, []).append(blk)
    for t in by_tensor:
        if t not in g_t:
            rep.fail(t, "the manifest names a tensor the grown model does not have")
    try:
        source = correspondence(base, grown, manifest)
    except ValueError as exc:
        rep.fail("(layers)", str(exc).split(": ", 1)[1])
        return rep
    dtype = np.dtype(grown.dtype)
    if np.dtype(base.dtype) != dtype:
        rep.fail("(model)", f"dtype changed from {np.dtype(base.dtype)} to {dtype}")
        return rep
    used = set()
    for t, arr in g_t.items():
        src = source[t]
        blocks = sorted(by_tensor.get(t, []), key=lambda blk: blk.index)
        rep.tensors += 1
        if src is not None:
            used.add(src)
            if src not in b_t:
                rep.fail(t, f"its base tensor {src!r} does not exist")
                continue
        if not blocks:
            if src is None:
                rep.fail(t, "a new tensor without blocks in the manifest")
            elif not _bits_equal(arr, b_t[src]):
                rep.fail(t, f"not in the manifest, yet differs from the base tensor {src!r}")
            continue
        ax = _axis_of(blocks, arr.shape)
        if ax is None:
            rep.fail(t, f"the manifest's blocks do not tile the tensor (shape {list(arr.shape)}) along one axis")
            continue
        _check_blocks(rep, t, arr, b_t.get(src) if src is not None else None, blocks, ax, dtype)
    for t in b_t:
        if t not in used:
            rep.fail(t, "a base tensor with no counterpart in the grown model")
    if base.causal != grown.causal:
        rep.fail("(options)", f"causal changed from {base.causal} to {grown.causal}")
    _check_arch(rep, base, grown)
    if rep.scaled_rounding > 0:
        rep.notes.append(
            f"scaled blocks are rounded in {dtype}: up to {rep.scaled_rounding:.2g} ulp per entry from the exact "
            "product (a factor that is a power of two would be exact)"
        )
    eps_expected = base.norm_eps * base.h / grown.h if grown.h != base.h else base.norm_eps
    if grown.norm_eps != eps_expected:
        rep.fail("(options)", f"norm_eps is {grown.norm_eps!r}, expected {eps_expected!r} (eps x h/h^)")
    if op is not None:
        _check_constraints(rep, grown, manifest, op)
    return rep


def _check_arch(rep: AuditReport, base: Model, grown: Model) -> None:
    """The blocks are kept; RoPE's base is ``theta^(k^/k)`` after key growth (docs/spec.md 4.2)."""
    a, b = base.arch, grown.arch
    changed = [f for f, v in a.to_dict().items() if b.to_dict()[f] != v and f != "rope_theta"]
    if changed:
        rep.fail("(options)", f"architecture changed ({', '.join(changed)})")
        return
    if a.positions != "rope":
        return
    k_old = {hd.k for L in base.layers for hd in L.heads}
    k_new = {hd.k for L in grown.layers for hd in L.heads}
    if len(k_old) == 1 and len(k_new) == 1 and k_old != k_new:
        expected = a.rope_theta ** (next(iter(k_new)) / next(iter(k_old)))
    else:
        expected = a.rope_theta
    if b.rope_theta != expected:
        rep.fail("(options)", f"rope_theta is {b.rope_theta!r}, expected {expected!r} (theta^(k^/k))")


def _expected_factor(t: str, new_shape, old_shape) -> float | None:
    """The factor an expansion scales tensor ``t`` by, from its old and new sizes (:data:`fpt_ref.paper.SCALE_FACTORS`)."""
    from .paper import SCALE_FACTORS, SCALED_TENSORS

    kind = parse_name(t)[0]
    for scaling, kinds in SCALED_TENSORS.items():
        if kind in kinds and scaling in SCALE_FACTORS:
            axis, sign = SCALE_FACTORS[scaling]
            axis = min(axis, len(old_shape) - 1)  # a bias vector: its only axis
            old, new = int(old_shape[axis]), int(new_shape[axis])
            return math.sqrt(new / old) if sign > 0 else math.sqrt(old / new)
    return None


def _check_blocks(rep: AuditReport, t: str, arr, old, blocks, ax: int, dtype) -> None:
    off = 0
    for blk in blocks:
        rep.blocks += 1
        sl = tuple(slice(a, b) for a, b in blk.index)
        part = arr[sl]
        where = _index_str(blk.index)
        if blk.role == "zero":
            if np.count_nonzero(part):
                rep.fail(t, f"zero block holds {np.count_nonzero(part)} non-zero entries", where)
            continue
        if blk.role == "free":
            if not np.all(np.isfinite(part)):
                rep.fail(t, "free block holds non-finite values", where)
            continue
        if blk.role == "mean":
            _check_mean(rep, t, part, old, where, dtype)
            continue
        if blk.role not in ("copied", "scaled"):
            rep.fail(t, f"unknown role {blk.role!r}", where)
            continue
        if old is None:
            rep.fail(t, f"{blk.role} block in a tensor that has no base tensor", where)
            continue
        n = blk.index[ax][1] - blk.index[ax][0]
        src_idx = tuple(
            slice(off, off + n) if i == ax else slice(0, old.shape[i] if i < old.ndim else 0) for i in range(arr.ndim)
        )
        off += n
        src = old[src_idx] if old.ndim == arr.ndim else None
        if src is None or src.shape != part.shape:
            rep.fail(t, f"{blk.role} block of shape {list(part.shape)} has no base block of that shape", where)
            continue
        if blk.role == "copied":
            if not _bits_equal(part, src):
                rep.fail(t, f"copied block differs from the base tensor in {int(np.sum(part != src))} entries", where)
            continue
        expected = _expected_factor(t, arr.shape, old.shape)
        if expected is None:
            rep.fail(t, "scaled block in a tensor that no expansion scales", where)
            continue
        if blk.factor is None or float(blk.factor) != expected:
            rep.fail(t, f"scaled block claims factor {blk.factor!r}; the expansion's factor is {expected!r}", where)
            continue
        factor = dtype.type(expected)
        if float(factor) != expected:
            rep.notes.append(
                f"{t}{where}: factor {expected!r} rounds to {float(factor)!r} in {dtype} "
                f"(relative {abs(float(factor) - expected) / expected:.1e})"
            )
        if not _bits_equal(part, src * factor):
            rep.fail(t, f"scaled block is not base x {expected!r} in {dtype}", where)
        else:
            from .tolerance import scaling_rounding

            rep.scaled_rounding = max(rep.scaled_rounding, scaling_rounding(src, part, expected))
    if old is not None:
        if off != (old.shape[ax] if ax < old.ndim else -1):
            rep.fail(
                t, f"copied and scaled blocks cover {off} of the base tensor's {old.shape[ax]} entries on axis {ax}"
            )


def _check_mean(rep: AuditReport, t: str, part, old, where: str, dtype) -> None:
    """A ``mean`` block: every column the row mean of the base tensor, rounded once to ``dtype``.

    The expansion computes the mean in float64 and rounds it; recomputing it here may differ
    in float64's last bits (summation order), so each entry must lie within one ulp (of the
    model's dtype) of this mean plus the float64 summation bound ``n u_64 max|row|``.
    """
    if old is None or old.shape[:-1] != part.shape[:-1]:
        rep.fail(t, "mean block has no base tensor of matching rows", where)
        return
    ref = np.mean(old, axis=-1, keepdims=True, dtype=np.float64)  # [..., 1]
    n = old.shape[-1]
    scale = np.max(np.abs(old), axis=-1, keepdims=True).astype(np.float64)  # [..., 1]
    bound = np.spacing(np.abs(ref).astype(dtype)).astype(np.float64) + n * 2.0**-53 * scale  # [..., 1]
    bad = np.abs(part.astype(np.float64) - ref) > bound
    if np.any(bad):
        rep.fail(t, f"mean block differs from the row mean of the base tensor in {int(np.sum(bad))} entries", where)


def _place(t: str, per: str):
    """The place of tensor ``t`` where constraint sets apply: a layer, a head, or the model."""
    _, n, e = parse_name(t)
    if per == "model" or n is None:
        return ()
    return (n,) if per == "layer" else (n, e)


def _check_constraints(rep: AuditReport, grown: Model, manifest: list, op: str) -> None:
    """At every place the step acted on, the blocks include one minimal sufficient set of ``op``.

    Every block must carry a name of the step's table row (new blocks) or a tensor symbol
    (copied or scaled blocks). At each place (:attr:`fpt_ref.paper.Expansion.per`), a set
    ``(zero, scalings)`` holds when every block it names that the place can have (its tensor
    exists there) is present and entirely zero, and every tensor of the place that a scaling
    multiplies has a scaled block.
    """
    from .blocks import constraint_sets
    from .paper import SCALED_TENSORS, SYMBOLS, expansion

    row = expansion(op)
    known_new, known_old = set(row.all_blocks), set(SYMBOLS.values())
    for blk in manifest:
        name = getattr(blk, "block", None)
        ok = name in known_new if blk.role in ("zero", "mean", "free") else name in known_old
        if not ok:
            rep.fail(
                "(constraints)",
                f"block {blk.tensor}{_index_str(blk.index)} ({blk.role}) is named {name!r}, "
                f"not a block of {row.theorem} ({', '.join(row.all_blocks)})",
            )
            return
    kinds = {t: parse_name(t)[0] for t in named_tensors(grown)}
    places: dict = {}
    for blk in manifest:
        places.setdefault(_place(blk.tensor, row.per), []).append(blk)
    for place, blocks in places.items():
        here = [t for t in kinds if _place(t, row.per) == place]
        roles: dict = {}
        for blk in blocks:
            roles.setdefault(blk.block, set()).add(blk.role)
        scaled_tensors = {blk.tensor for blk in blocks if blk.role == "scaled"}

        def holds(zero, scalings, mean, here=here, roles=roles, scaled_tensors=scaled_tensors) -> bool:
            for b, role in [(b, "zero") for b in zero] + [(b, "mean") for b in mean]:
                possible = any(kinds[t] in row.tensors[b] for t in here)
                if possible and roles.get(b) != {role}:
                    return False
            for sc in scalings:
                for t in here:
                    if kinds[t] in SCALED_TENSORS[sc] and t not in scaled_tensors:
                        return False
            return True

        sets_ok = constraint_sets(op, grown.arch)
        if not any(holds(z, sc, m) for z, sc, m in sets_ok):
            sets = "; ".join(
                "{"
                + ", ".join(sorted(z))
                + "}"
                + (" with " + ", ".join(sorted(sc)) + " scaled" if sc else "")
                + (" and {" + ", ".join(sorted(m)) + "} the row mean" if m else "")
                for z, sc, m in sets_ok
            )
            where = (
                "the model"
                if not place
                else ("layer {}".format(*place) if len(place) == 1 else "layer {}, head {}".format(*place))
            )
            rep.fail("(constraints)", f"{row.theorem} at {where}: no sufficient constraint set holds (one of: {sets})")
            return


# ---- a whole plan: the record ``expand`` writes and ``verify`` replays -------------------

RECORD_FORMAT = "fpt-ref-manifest/1"


def fingerprint(model: Model) -> str:
    """SHA-256 of a model's tensors (names, dtypes, shapes, bytes) and options, in file order."""
    import hashlib

    h = hashlib.sha256()
    for name, arr in named_tensors(model).items():
        a = np.ascontiguousarray(to_numpy(arr))
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.view(np.uint8).tobytes())
    h.update(f"norm_eps={float(model.norm_eps)!r}|causal={bool(model.causal)}".encode())
    return h.hexdigest()


def plan_record(base: Model, results: list, init: str, seed: int) -> dict:
    """The JSON-ready record of a plan run (:func:`fpt_ref.run_plan`'s results).

    It holds what a replay needs (each step, the initializer and the seed each step drew
    from: ``seed + i``), each step's manifest, and the fingerprints of the base and final
    models. :func:`audit_record` checks a model against it.
    """
    if not isinstance(init, str):
        raise ValueError("init: only 'normal' or 'zeros' can be recorded for a replay, not a callable")
    from .checks import check_int

    seed = check_int("seed", seed, 0)
    return {
        "format": RECORD_FORMAT,
        "init": init,
        "base": fingerprint(base),
        "final": fingerprint(results[-1].model) if results else fingerprint(base),
        "steps": [
            {
                "step": str(r.step),
                "op": r.step.op,
                "args": dict(r.step.args),
                "seed": seed + i,
                "blocks": [b.to_dict() for b in r.manifest],
            }
            for i, r in enumerate(results)
        ],
    }


def _block_from_dict(d: dict):
    from .expansions import Block

    # (start, stop) pairs in a well-formed record; the audit of the blocks judges the rest
    index = cast(tuple[tuple[int, int], ...], tuple(tuple(int(v) for v in ix) for ix in d["index"]))
    return Block(d["tensor"], index, d["role"], d.get("factor"), d.get("block"), d.get("rounding"))


def parse_record(record) -> dict:
    """Validate a plan record (as read from JSON) before any work; ``ValueError`` naming ``record``.

    Returns ``{"init", "base", "final", "steps": [(step dict, Step, [Block, ...]), ...]}``;
    steps are checked as plan steps are (:func:`fpt_ref.plan.make_step`).
    """
    from .plan import make_step

    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"record: not a {RECORD_FORMAT} record")
    try:
        init = str(record["init"])
        if init not in ("normal", "zeros"):
            raise ValueError(f"init {init!r}")
        steps = []
        for st in record["steps"]:
            st = dict(st, seed=int(st["seed"]), step=str(st["step"]), blocks=list(st["blocks"]))
            blocks = [_block_from_dict(b) for b in st["blocks"]]
            steps.append((st, make_step(st["op"], dict(st["args"])), blocks))
        return {"init": init, "base": str(record["base"]), "final": str(record["final"]), "steps": steps}
    except (KeyError, TypeError, ValueError) as exc:
        msg = str(exc).removeprefix("plan: ")
        raise ValueError(f"record: malformed {RECORD_FORMAT} record ({type(exc).__name__}: {msg})") from None


def audit_record(base: Model, final: Model, record) -> AuditReport:
    """Check ``final`` against a plan record (:func:`plan_record`): replay, then audit each step.

    The plan is replayed on ``base`` with the recorded initializer and seeds; each replayed
    step must produce the recorded manifest, pass :func:`audit_step` (blocks bit for bit, a
    proved constraint set), and the last model must equal ``final`` bit for bit. The first
    failure is reported with its step. ``record`` is the dict read from JSON.
    """
    from .plan import apply_step

    rep = AuditReport()
    parsed = parse_record(record)
    init, steps = parsed["init"], parsed["steps"]
    if parsed["base"] != fingerprint(base):
        rep.fail("(base)", "the record was made from another base model (fingerprints differ)")
        return rep
    final_fp = fingerprint(final)  # hashes every byte of the model: once
    if parsed["final"] != final_fp:
        rep.notes.append("the model is not the recorded plan's output (fingerprints differ); replaying to find where")
    current = base
    for i, (st, step, blocks) in enumerate(steps):
        where = f"step {i + 1} ({st['step']})"
        try:
            nxt, manifest = apply_step(current, step, init=init, seed=st["seed"], return_manifest=True)
        except ValueError as exc:
            rep.fail(where, f"the recorded step cannot be replayed ({exc})")
            return rep
        if [b.to_dict() for b in manifest] != st["blocks"]:
            rep.fail(where, "the replayed step's manifest differs from the recorded one")
            return rep
        sub = audit_step(current, nxt, blocks, step.op)
        rep.blocks += sub.blocks
        rep.tensors += sub.tensors
        rep.notes += [f"{where}: {n}" for n in sub.notes]
        for f in sub.findings:
            rep.fail(f.tensor, f"{where}: {f.reason}", f.block)
        if not sub.ok:
            return rep
        current = nxt
    if final_fp != fingerprint(current):
        g, r = named_tensors(final), named_tensors(current)
        diff = [t for t in r if t not in g or not _bits_equal(to_numpy(g[t]), to_numpy(r[t]))]
        extra = [t for t in g if t not in r]
        what = (diff + extra)[:1] or ["(options)"]
        rep.fail(what[0], "the model differs from the replay of the recorded plan")
    return rep

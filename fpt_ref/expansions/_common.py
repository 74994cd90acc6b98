"""Shared machinery of the six expansions: selections, free-block initializers, and a
block builder that concatenates arrays while recording the manifest.

A manifest is a list of :class:`Block` records, one for every new or changed block of a
tensor of the expanded model, with its role:

- ``copied``: an existing block, unchanged;
- ``scaled``: an existing block multiplied by ``factor``;
- ``zero``:   a new block constrained to zero by the theorem;
- ``mean``:   a new block constrained to the row mean of the existing block it extends
  (LayerNorm hidden growth, docs/spec.md section 4.2): every new column equals the mean of
  the old columns, computed in float64 and rounded once to the model's dtype;
- ``free``:   a new block that may hold any value (filled by the initializer).

Each block also carries its name in the paper's notation (``block``):

- a new block (``zero`` or ``free``) is named by the paper's name for it, one of the keys of
  ``fpt_ref.paper.EXPANSIONS[op].blocks`` (``M_l2``, ``m_b_l1``, ``W_Q_new``, ...). The
  expansion's code names it where it builds it (``Builder.zeros("M_l2", ...)``), and the
  builder refuses a name that is not in the paper's table for that expansion, or a tensor
  the table does not place that block in;
- an existing block (``copied`` or ``scaled``) is named by the paper symbol of the tensor
  it belongs to, ``fpt_ref.paper.SYMBOLS`` (``W_l1``, ``g_MHA``, ``W_K,e``, ...).

Roles and new-block names come from the structure of each expansion (the code that builds
the block states them), never from tensor names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from .. import paper
from ..checks import check_int, is_int
from ..model import Array, Model
from ..names import parse_name

ROLES = ("copied", "scaled", "zero", "mean", "free")

Init = Union[str, Callable]


@dataclass(frozen=True)
class Block:
    """One block of a tensor of the expanded model.

    ``index`` holds one ``(start, stop)`` pair per axis of the tensor ``tensor``; ``block``
    is the block's name in the paper's notation (module doc), e.g. ``"M_l2"`` or ``"W_K,e"``.

    >>> print(Block("layers.0.w_l2", ((32, 48), (0, 16)), "zero", block="M_l2"))
    layers.0.w_l2[32:48, 0:16] zero (M_l2)
    """

    tensor: str
    index: tuple[tuple[int, int], ...]
    role: str
    factor: float | None = None
    block: str | None = None
    rounding: float | None = None  # scaled blocks: max ulps of fl(factor x block) from the exact product

    def __str__(self) -> str:
        idx = ", ".join(f"{a}:{b}" for a, b in self.index)
        extra = f" x{self.factor!r}" if self.role == "scaled" else ""
        if self.rounding:
            extra += f" rounded<={self.rounding:.2g}ulp"
        name = f" ({self.block})" if self.block is not None else ""
        return f"{self.tensor}[{idx}] {self.role}{extra}{name}"

    def to_dict(self) -> dict:
        out = {
            "tensor": self.tensor,
            "index": [list(i) for i in self.index],
            "role": self.role,
            "factor": self.factor,
            "block": self.block,
        }
        if self.rounding is not None:
            out["rounding"] = self.rounding
        return out


class Builder:
    """Builds the new tensors of one call of expansion ``op`` and records their manifest.

    ``op`` is the expansion's name in :data:`fpt_ref.paper.EXPANSIONS`; new blocks must be
    named by that row's ``blocks``.

    ``init`` is ``"normal"`` (default: a seeded normal draw, in the model's dtype, with the
    mean and standard deviation of the existing tensor the block extends, estimated from at
    most 65,536 of its entries; where that tensor is constant the standard deviation is
    ``1/sqrt(fan_in)``), ``"zeros"``, or a callable
    ``init(shape, like, rng) -> array`` where ``like`` is the existing tensor (or ``None``)
    and ``rng`` a ``numpy.random.Generator``.
    """

    def __init__(self, model: Model, op: str, init: Init = "normal", seed: int | None = 0):
        self.row = paper.expansion(op)
        if not (init in ("normal", "zeros") or callable(init)):
            raise ValueError(f"init: must be 'normal', 'zeros' or a callable, got {init!r}")
        if seed is not None:
            check_int("seed", seed, 0)
        self.xp = model.xp
        self.dtype = model.dtype
        self.init = init
        self.rng = np.random.default_rng(seed)
        self.blocks: list = []

    # ---- new blocks -------------------------------------------------------------------
    def _new(self, block: str) -> str:
        if block not in self.row.all_blocks:  # a programming error in an expansion, not a user error
            raise AssertionError(f"{block!r} is not a new block of {self.row.name} ({', '.join(self.row.all_blocks)})")
        return block

    def zeros(self, block: str, shape) -> Part:
        """New block ``block`` (paper name) of zeros: the theorem's constraint."""
        return Part(self.xp.zeros(tuple(shape), dtype=self.dtype), "zero", block=self._new(block))

    def mean(self, block: str, arr, d: int) -> Part:
        """New block ``block`` (paper name): ``d`` columns (last axis), each the row mean of ``arr``
        (computed in float64, rounded once to the model's dtype)."""
        xp = self.xp
        m = xp.mean(arr, axis=-1, keepdims=True, dtype=xp.float64).astype(self.dtype)  # [..., 1]
        return Part(xp.repeat(m, d, axis=-1), "mean", block=self._new(block))

    def free(self, block: str, shape, like=None) -> Part:
        """New free block ``block`` (paper name), filled by the initializer; ``like`` is the
        existing tensor it extends (or ``None``)."""
        block = self._new(block)
        shape = tuple(int(d) for d in shape)
        if self.init == "zeros":
            return Part(self.xp.zeros(shape, dtype=self.dtype), "free", block=block)
        if self.init == "normal":
            mean, std = _moments(like)
            if not std > 0:
                std = 1.0 / math.sqrt(shape[0])
            arr = self.rng.standard_normal(shape, dtype=np.dtype(self.dtype).type)  # drawn in the model's dtype
            arr *= std
            arr += mean
        else:
            assert callable(self.init)  # __init__ accepts only "normal", "zeros" or a callable
            arr = self.init(shape, like, self.rng)
            if tuple(getattr(arr, "shape", ())) != shape:
                raise ValueError(
                    f"init: the callable returned shape {list(getattr(arr, 'shape', []))}, expected {list(shape)}"
                )
        return Part(self.xp.asarray(arr, dtype=self.dtype), "free", block=block)

    @staticmethod
    def copied(arr) -> Part:
        """An existing block, unchanged (named by its tensor's paper symbol)."""
        return Part(arr, "copied")

    def scaled(self, arr, factor: float) -> Part:
        """An existing block multiplied by ``factor`` (named by its tensor's paper symbol); the
        part records the rounding of the product in the model's dtype
        (:func:`fpt_ref.tolerance.scaling_rounding`: 0 for a power-of-two factor)."""
        from ..tolerance import scaling_rounding

        out = arr * self.xp.asarray(factor, dtype=self.dtype)
        return Part(out, "scaled", factor, rounding=scaling_rounding(arr, out, factor))

    # ---- assembling -------------------------------------------------------------------
    def concat(self, name: str, parts: Sequence[Part], axis: int):
        """Concatenate ``parts`` along ``axis`` into tensor ``name``, recording each part."""
        kind = parse_name(name)[0]
        arrays = [p.array for p in parts]
        out = arrays[0] if len(arrays) == 1 else self.xp.concatenate(arrays, axis=axis)
        off = 0
        for p in parts:
            if p.block is None:
                block = paper.SYMBOLS[kind]
            elif kind in self.row.tensors[p.block]:
                block = p.block
            else:  # a programming error in an expansion
                raise AssertionError(f"{self.row.name}: block {p.block} does not lie in a {kind} tensor ({name})")
            n = int(p.array.shape[axis])
            index = tuple((off, off + n) if ax == axis else (0, int(d)) for ax, d in enumerate(out.shape))
            self.blocks.append(Block(name, index, p.role, p.factor, block, p.rounding))
            off += n
        return out

    def whole(self, name: str, part: Part):
        """A whole new tensor ``name`` made of one part."""
        return self.concat(name, [part], axis=0)


@dataclass(frozen=True)
class Part:
    array: Array
    role: str
    factor: float | None = None
    block: str | None = None  # paper name of a new block; None: the tensor's symbol
    rounding: float | None = None


_MOMENT_SAMPLE = 1 << 16


def _moments(like) -> tuple:
    """Mean and standard deviation of ``like`` (``(0, 0)`` for ``None``), in float64.

    Taken over at most 65,536 evenly spaced entries, in ``like``'s own array library, so
    neither a float64 copy of a large tensor nor a device-to-host copy is made.
    """
    if like is None or like.size == 0:
        return 0.0, 0.0
    flat = like.reshape(-1)  # [n]
    sample = flat[:: max(1, flat.size // _MOMENT_SAMPLE)]  # [<= 2 * 65536]
    return float(sample.mean(dtype="float64")), float(sample.std(dtype="float64"))


def finish(model: Model, blocks: list, return_manifest: bool):
    return (model, list(blocks)) if return_manifest else model


def layer_indices(model: Model, layers, name: str = "layers") -> list:
    """Validate a layer selection (``None`` = all, an int, or a sequence of ints)."""
    if model.N == 0:
        raise ValueError(f"{name}: the model has no layers (N=0); add one first (add_layer)")
    if layers is None:
        return list(range(model.N))
    if is_int(layers):
        layers = [layers]
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise ValueError(f"{name}: expected a layer index or a list of them, got {layers!r}")
    out = []
    for n in layers:
        if not is_int(n):
            raise ValueError(f"{name}: layer index {n!r} is not an integer")
        if not 0 <= n < model.N:
            raise ValueError(f"{name}: layer index {n!r} is out of range for a model with N={model.N} layers")
        if int(n) in out:
            raise ValueError(f"{name}: layer index {n} given twice")
        out.append(int(n))
    if not out:
        raise ValueError(f"{name}: select at least one layer")
    return out


def head_indices(model: Model, n: int, heads, name: str = "heads") -> list:
    """Validate a head selection within layer ``n`` (``None`` = all heads of that layer)."""
    E = model.layers[n].E
    if heads is None:
        return list(range(E))
    if is_int(heads):
        heads = [heads]
    if isinstance(heads, str) or not hasattr(heads, "__iter__"):
        raise ValueError(f"{name}: expected a head index or a list of them, got {heads!r}")
    out = []
    for e in heads:
        if not is_int(e):
            raise ValueError(f"{name}: head index {e!r} is not an integer")
        if not 0 <= e < E:
            raise ValueError(f"{name}: head index {e!r} is out of range for layer {n}, which has E={E} heads")
        if int(e) in out:
            raise ValueError(f"{name}: head index {e} given twice")
        out.append(int(e))
    if not out:
        raise ValueError(f"{name}: select at least one head")
    return out


def group_indices(model: Model, n: int, heads, name: str = "heads") -> list:
    """The key/value groups of layer ``n`` that a head selection covers (all heads: every group).

    In a grouped-query layer the heads of one group share their keys and values, so a key or
    value expansion applies to whole groups: a selection that covers part of a group is
    refused, naming the group's heads. Ungrouped layers: one group per head.
    """
    L = model.layers[n]
    chosen = head_indices(model, n, heads, name)
    r = L.group_size
    groups = sorted({e // r for e in chosen})
    for g in groups:
        members = set(range(g * r, (g + 1) * r))
        if not members <= set(chosen):
            raise ValueError(
                f"{name}: heads {g * r}..{(g + 1) * r - 1} of layer {n} share their keys and values (grouped query "
                f"attention, kv_heads={L.G}); select all of them or none"
            )
    return groups


def check_grows(name: str, new: int, old: int, where: str) -> int:
    new = check_int(name, new, 1)
    if new <= old:
        raise ValueError(f"{name}: {name}={new} does not grow {where}, which already has {name}={old}")
    return new

"""Shared machinery of the six expansions: argument checks, free-block initializers, and a
block builder that concatenates arrays while recording the manifest.

A manifest is a list of :class:`Block` records, one for every new or changed block of a
tensor of the expanded model, with its role:

- ``copied``: an existing block, unchanged;
- ``scaled``: an existing block multiplied by ``factor``;
- ``zero``:   a new block constrained to zero by the theorem;
- ``free``:   a new block that may hold any value (filled by the initializer).

Roles come from the structure of each expansion (the code that builds the block states
it), never from tensor names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from ..model import Model

ROLES = ("copied", "scaled", "zero", "free")

Init = Union[str, Callable]


@dataclass(frozen=True)
class Block:
    """One block of a tensor of the expanded model.

    ``index`` holds one ``(start, stop)`` pair per axis of the tensor ``tensor``.
    """

    tensor: str
    index: tuple[tuple[int, int], ...]
    role: str
    factor: float | None = None

    def __str__(self) -> str:
        idx = ", ".join(f"{a}:{b}" for a, b in self.index)
        extra = f" x{self.factor!r}" if self.role == "scaled" else ""
        return f"{self.tensor}[{idx}] {self.role}{extra}"

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "index": [list(i) for i in self.index], "role": self.role, "factor": self.factor}


class Builder:
    """Builds the new tensors of one expansion call and records their manifest.

    ``init`` is ``"normal"`` (default: a seeded normal draw, in the model's dtype, with the
    mean and standard deviation of the existing tensor the block extends, estimated from at
    most 65,536 of its entries; where that tensor is constant the standard deviation is
    ``1/sqrt(fan_in)``), ``"zeros"``, or a callable
    ``init(shape, like, rng) -> array`` where ``like`` is the existing tensor (or ``None``)
    and ``rng`` a ``numpy.random.Generator``.
    """

    def __init__(self, model: Model, init: Init = "normal", seed: int | None = 0):
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
    def zeros(self, shape) -> Part:
        return Part(self.xp.zeros(tuple(shape), dtype=self.dtype), "zero")

    def free(self, shape, like=None) -> Part:
        shape = tuple(int(d) for d in shape)
        if self.init == "zeros":
            return Part(self.xp.zeros(shape, dtype=self.dtype), "free")
        if self.init == "normal":
            mean, std = _moments(like)
            if not std > 0:
                std = 1.0 / math.sqrt(shape[0])
            arr = self.rng.standard_normal(shape, dtype=np.dtype(self.dtype).type)  # drawn in the model's dtype
            arr *= std
            arr += mean
        else:
            arr = self.init(shape, like, self.rng)
            if tuple(getattr(arr, "shape", ())) != shape:
                raise ValueError(
                    f"init: the callable returned shape {list(getattr(arr, 'shape', []))}, expected {list(shape)}"
                )
        return Part(self.xp.asarray(arr, dtype=self.dtype), "free")

    @staticmethod
    def copied(arr) -> Part:
        return Part(arr, "copied")

    def scaled(self, arr, factor: float) -> Part:
        return Part(arr * self.xp.asarray(factor, dtype=self.dtype), "scaled", factor)

    # ---- assembling -------------------------------------------------------------------
    def concat(self, name: str, parts: Sequence[Part], axis: int):
        """Concatenate ``parts`` along ``axis`` into tensor ``name``, recording each part."""
        arrays = [p.array for p in parts]
        out = arrays[0] if len(arrays) == 1 else self.xp.concatenate(arrays, axis=axis)
        off = 0
        for p in parts:
            n = int(p.array.shape[axis])
            index = tuple((off, off + n) if ax == axis else (0, int(d)) for ax, d in enumerate(out.shape))
            self.blocks.append(Block(name, index, p.role, p.factor))
            off += n
        return out

    def whole(self, name: str, part: Part):
        """A whole new tensor ``name`` made of one part."""
        return self.concat(name, [part], axis=0)


@dataclass(frozen=True)
class Part:
    array: object
    role: str
    factor: float | None = None


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


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int) -> int:
    if not _is_int(value):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value}")
    return int(value)


def layer_indices(model: Model, layers, name: str = "layers") -> list:
    """Validate a layer selection (``None`` = all, an int, or a sequence of ints)."""
    if model.N == 0:
        raise ValueError(f"{name}: the model has no layers (N=0); add one first (add_layer)")
    if layers is None:
        return list(range(model.N))
    if _is_int(layers):
        layers = [layers]
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise ValueError(f"{name}: expected a layer index or a list of them, got {layers!r}")
    out = []
    for n in layers:
        if not _is_int(n):
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
    if _is_int(heads):
        heads = [heads]
    if isinstance(heads, str) or not hasattr(heads, "__iter__"):
        raise ValueError(f"{name}: expected a head index or a list of them, got {heads!r}")
    out = []
    for e in heads:
        if not _is_int(e):
            raise ValueError(f"{name}: head index {e!r} is not an integer")
        if not 0 <= e < E:
            raise ValueError(f"{name}: head index {e!r} is out of range for layer {n}, which has E={E} heads")
        if int(e) in out:
            raise ValueError(f"{name}: head index {e} given twice")
        out.append(int(e))
    if not out:
        raise ValueError(f"{name}: select at least one head")
    return out


def check_grows(name: str, new: int, old: int, where: str) -> int:
    new = check_int(name, new, 1)
    if new <= old:
        raise ValueError(f"{name}: {name}={new} does not grow {where}, which already has {name}={old}")
    return new

"""The data of one drawn tensor (a *card*): its arrays before and after, its blocks and axes.

Each axis is split into the manifest's segments; an axis longer than ``max_cells`` is
drawn subsampled, every segment keeping at least 3 display cells so narrow new blocks
stay visible (:func:`axis_map`). A layer's per-head ``W_O,e`` are drawn as the paper's one
stacked ``W_O`` (:func:`stack_heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import names
from ..model import Model, named_tensors
from ..paper import SYMBOLS
from ..xp import to_numpy
from .selection import is_new_tensor
from .symbols import axis_symbols, parse_name


@dataclass(frozen=True)
class AxisMap:
    """Display cells of one axis: ``idx`` (source index of each cell) and segment bounds."""

    idx: np.ndarray  # [cells] indices into the tensor's axis
    bounds: tuple  # source boundaries, 0 .. n
    disp: tuple  # display position of each boundary

    @property
    def sampled(self) -> bool:
        return len(self.idx) < self.bounds[-1]

    def at(self, i: int) -> float:
        return self.disp[self.bounds.index(i)]


def axis_map(bounds: Sequence[int], max_cells: int = 64) -> AxisMap:
    """Map an axis with segment boundaries ``bounds`` (0 .. n) to at most ~``max_cells`` cells."""
    bounds = tuple(sorted(set(int(b) for b in bounds)))
    n = bounds[-1]
    if n <= max_cells:
        return AxisMap(np.arange(n), bounds, bounds)
    idx, disp = [], [0]
    for a, b in zip(bounds[:-1], bounds[1:]):
        cells = min(b - a, max(3, int(round((b - a) * max_cells / n))))
        idx.append(np.unique(np.round(np.linspace(a, b - 1, cells)).astype(int)))
        disp.append(disp[-1] + len(idx[-1]))
    return AxisMap(np.concatenate(idx), bounds, tuple(disp))


def _as2d(a) -> np.ndarray:
    a = np.asarray(to_numpy(a), dtype=np.float64)
    return a.reshape(1, -1) if a.ndim == 1 else a


def box2d(block) -> tuple:
    """``((r0, r1), (c0, c1))`` of a block, a vector being one row."""
    return ((0, 1),) + tuple(block.index) if len(block.index) == 1 else tuple(block.index)


@dataclass
class Card:
    """Everything needed to draw one tensor's before/after pair."""

    name: str
    before: np.ndarray | None  # [r, c] or None for a new tensor
    after: np.ndarray  # [r^, c^]
    blocks: list
    rows: AxisMap
    cols: AxisMap
    rows_before: AxisMap | None
    cols_before: AxisMap | None
    symbols: tuple  # (row symbol or None, column symbol)
    row_labels: list | None = None  # after: [(r0, r1, label)] replacing the row segment labels
    row_labels_before: list | None = None  # before: the same

    @property
    def vmax(self) -> float:
        m = float(np.max(np.abs(self.after))) if self.after.size else 0.0
        if self.before is not None and self.before.size:
            m = max(m, float(np.max(np.abs(self.before))))
        return m if m > 0 else 1.0


def _restrict(m: AxisMap, n_old: int, max_cells: int) -> AxisMap:
    if n_old in m.bounds:
        k = m.bounds.index(n_old)
        return AxisMap(m.idx[m.idx < n_old], m.bounds[: k + 1], m.disp[: k + 1])
    return axis_map((0, n_old), max_cells)


def make_card(name: str, blocks: list, before: Model, after: Model, max_cells: int = 64) -> Card:
    """The card of tensor ``name``, read from the two models."""
    B = None if is_new_tensor(blocks) else named_tensors(before)[name]
    return card_from_arrays(name, blocks, B, named_tensors(after)[name], max_cells)


def card_from_arrays(
    name, blocks, before_array, after_array, max_cells=64, before_bounds=(), row_labels=None, row_labels_before=None
) -> Card:
    A = _as2d(after_array)  # [r^, c^]
    B = None if before_array is None else _as2d(before_array)  # [r, c]
    boxes = [box2d(b) for b in blocks]
    rows = axis_map([0, A.shape[0]] + [x for bx in boxes for x in bx[0]], max_cells)
    cols = axis_map([0, A.shape[1]] + [x for bx in boxes for x in bx[1]], max_cells)
    rb = cb = None
    if B is not None:
        if before_bounds:
            rb = axis_map(before_bounds, max_cells)
        else:
            rb = _restrict(rows, B.shape[0], max_cells)
        cb = _restrict(cols, B.shape[1], max_cells)
    s = axis_symbols(name)
    return Card(
        name, B, A, list(blocks), rows, cols, rb, cb, (None, s[0]) if len(s) == 1 else s, row_labels, row_labels_before
    )


def stack_heads(groups: dict, before: Model, after: Model) -> tuple[dict, dict]:
    """Replace each layer's per-head ``W_O,e`` entries by one stacked ``layers.n.W_O`` entry.

    The paper's ``W_O`` is ``(E v) x h``, the heads' blocks one under the other; head
    addition appends rows ``M_O`` and heads expansion *inserts* rows ``M_O,e`` after head
    ``e``'s block, which the stacked view shows. Each head's manifest blocks are shifted by
    the head's row offset; heads the step did not touch appear as one ``copied`` block.

    Parameters
    ----------
    groups : dict
        ``{tensor name: [Block, ...]}`` of one step (:func:`~fpt_ref.draw.selection.group_manifest`).
    before, after : Model
        The model before and after the step.

    Returns
    -------
    groups : dict
        ``groups`` with each layer's ``W_O,e`` entries replaced by one ``layers.n.W_O``
        entry (its shifted blocks), at the place of the layer's first ``W_O,e``; order kept.
    stacks : dict
        ``{"layers.n.W_O": (blocks, before array [sum v, h] or None, after array
        [sum v^, h^], before head bounds, after row labels, before row labels or None)}``,
        the arguments :func:`card_from_arrays` takes for a stacked card.
    """
    from ..expansions import Block

    out, stacks = {}, {}
    for name, blocks in groups.items():
        kind, n, e = parse_name(name)
        if kind != "w_o" or e is None:
            out[name] = blocks
            continue
        key = f"{names.layer_prefix(n)}.W_O"
        if key in stacks:
            continue
        La = after.layers[n]
        heads_new = [
            is_new_tensor(groups.get(names.tensor_name("w_o", n, i), [Block("", (), "copied")])) for i in range(La.E)
        ]
        stacked, labels, off = [], [], 0
        for i, hd in enumerate(La.heads):
            own = groups.get(names.tensor_name("w_o", n, i))
            if own is None:
                stacked.append(Block(key, ((off, off + hd.v), (0, after.h)), "copied", None, SYMBOLS["w_o"]))
            else:
                for b in own:
                    (r0, r1), cols = b.index
                    stacked.append(Block(key, ((off + r0, off + r1), cols), b.role, b.factor, b.block))
            labels.append((off, off + hd.v, f"head {i}" + (" (new)" if heads_new[i] else "")))
            off += hd.v
        A = np.concatenate([to_numpy(hd.w_o) for hd in La.heads], axis=0)  # [sum v^, h^]
        B, lb = None, None
        bb: tuple[int, ...] = ()
        if not all(heads_new):  # the layer existed: stack its heads as they were
            Lb = before.layers[n]
            B = np.concatenate([to_numpy(hd.w_o) for hd in Lb.heads], axis=0)  # [sum v, h]
            bb = tuple(int(x) for x in np.cumsum([0] + [hd.v for hd in Lb.heads]))
            lb = [(bb[i], bb[i + 1], f"head {i}") for i in range(Lb.E)]
        stacks[key] = (stacked, B, A, bb, labels, lb)
        out[key] = stacked
    return out, stacks

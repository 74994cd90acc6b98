"""One expansion step as a picture: the weight matrices it touches, before and after.

Each drawn tensor is a *card*: its heat map before the step, an arrow, and its heat map
after, at the same cell size so the growth is visible. Every block of the step's manifest
is outlined on the "after" map in its role's style (:mod:`fpt_ref.draw.styles`), and each
axis is split into the manifest's segments, labelled with the paper's symbols (``h``,
``p``, ``p^ - p`` ...). Roles and block positions come only from the manifest.

Large steps are capped: at most ``max_tensors`` cards (one per kind of tensor, e.g. one
``W_K,e`` stands for all heads' ``W_K,e``; the caption lists the rest), and an axis longer
than ``max_cells`` is drawn subsampled (every segment keeps at least 3 display cells, so
narrow new blocks stay visible; the card says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..model import Model, named_tensors
from ..xp import to_numpy
from . import styles
from .symbols import axis_symbols, parse_name, sym
from .symbols import title as tensor_title

NEW_ROLES = ("zero", "free")


def group_manifest(manifest: Sequence) -> dict:
    """``{tensor name: [Block, ...]}`` in manifest order."""
    groups: dict = {}
    for b in manifest:
        groups.setdefault(b.tensor, []).append(b)
    return groups


def is_new_tensor(blocks: Sequence) -> bool:
    """True when a tensor is made only of new blocks (it did not exist before the step)."""
    return all(b.role in NEW_ROLES for b in blocks)


def select_tensors(groups: dict, max_tensors: int = 6):
    """Choose which tensors to draw: ``(chosen, omitted)``, both lists of names.

    One representative per kind of tensor (its first occurrence); first enough kinds to show
    every role present in the step (greedy), then one of each pattern of roles not yet
    shown, then kinds holding a zero constraint, then the rest in manifest order, up to
    ``max_tensors``. ``chosen`` keeps manifest order.
    """
    if max_tensors < 1:
        raise ValueError(f"max_tensors: must be at least 1, got {max_tensors}")
    reps: dict = {}
    for name, blocks in groups.items():
        key = (parse_name(name)[0], tuple(b.role for b in blocks), is_new_tensor(blocks))
        reps.setdefault(key, name)
    order = list(reps.values())
    roles_of = {n: {b.role for b in groups[n]} for n in order}
    chosen: list = []
    uncovered = set().union(*roles_of.values()) if roles_of else set()
    while uncovered and len(chosen) < max_tensors:
        best = max((n for n in order if n not in chosen), key=lambda n: len(roles_of[n] & uncovered))
        if not roles_of[best] & uncovered:
            break
        chosen.append(best)
        uncovered -= roles_of[best]

    def add(pred):
        for n in order:
            if len(chosen) < max_tensors and n not in chosen and pred(n):
                chosen.append(n)

    shown = {tuple(b.role for b in groups[n]) for n in chosen}
    for n in order:  # a tensor of each block pattern not yet shown (e.g. new free rows)
        pattern = tuple(b.role for b in groups[n])
        if len(chosen) < max_tensors and n not in chosen and pattern not in shown:
            chosen.append(n)
            shown.add(pattern)
    add(lambda n: "zero" in roles_of[n])  # then the constrained ones
    add(lambda n: True)
    chosen = [n for n in groups if n in chosen]
    omitted = [n for n in groups if n not in chosen]
    return chosen, omitted


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


def _box2d(block) -> tuple:
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
    boxes = [_box2d(b) for b in blocks]
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


def stack_heads(groups: dict, before: Model, after: Model) -> dict:
    """Replace each layer's per-head ``W_O,e`` entries by one stacked ``layers.n.W_O`` entry.

    The paper's ``W_O`` is ``(E v) x h``, the heads' blocks one under the other; head
    addition appends rows ``M_O`` and heads expansion *inserts* rows ``M_O,e`` after head
    ``e``'s block, which the stacked view shows. Each head's manifest blocks are shifted by
    the head's row offset; heads the step did not touch appear as one ``copied`` block.
    Returns ``{name: (blocks, before array or None, after array, before head bounds,
    after row labels, before row labels)}`` for the stacked entries; ``groups`` keeps its
    order, with each stack at the place of its layer's first ``W_O,e``.
    """
    from ..expansions import Block
    from ..xp import to_numpy

    out, stacks = {}, {}
    for name, blocks in groups.items():
        kind, n, e = parse_name(name)
        if kind != "w_o" or e is None:
            out[name] = blocks
            continue
        key = f"layers.{n}.W_O"
        if key in stacks:
            continue
        La = after.layers[n]
        heads_new = [
            is_new_tensor(groups.get(f"layers.{n}.heads.{i}.w_o", [Block("", (), "copied")])) for i in range(La.E)
        ]
        stacked, labels, off = [], [], 0
        for i, hd in enumerate(La.heads):
            own = groups.get(f"layers.{n}.heads.{i}.w_o")
            if own is None:
                stacked.append(Block(key, ((off, off + hd.v), (0, after.h)), "copied"))
            else:
                for b in own:
                    (r0, r1), cols = b.index
                    stacked.append(Block(key, ((off + r0, off + r1), cols), b.role, b.factor))
            labels.append((off, off + hd.v, f"head {i}" + (" (new)" if heads_new[i] else "")))
            off += hd.v
        A = np.concatenate([to_numpy(hd.w_o) for hd in La.heads], axis=0)  # [sum v^, h^]
        B, bb, lb = None, (), None
        if not all(heads_new):  # the layer existed: stack its heads as they were
            Lb = before.layers[n]
            B = np.concatenate([to_numpy(hd.w_o) for hd in Lb.heads], axis=0)  # [sum v, h]
            bb = tuple(int(x) for x in np.cumsum([0] + [hd.v for hd in Lb.heads]))
            lb = [(bb[i], bb[i + 1], f"head {i}") for i in range(Lb.E)]
        stacks[key] = (stacked, B, A, bb, labels, lb)
        out[key] = stacked
    return out, stacks


# ---- geometry (inches) -----------------------------------------------------------------
LEFT, GAP, RIGHT, TOP, BOTTOM = 1.15, 0.7, 1.25, 0.72, 0.78
MIN_PANEL = 0.26  # smallest drawn panel side (vectors are one cell high)


def _panel_size(card: Card, c: float, which: str) -> tuple:
    rows, cols = (card.rows, card.cols) if which == "after" else (card.rows_before, card.cols_before)
    if rows is None:
        return 0.9, max(MIN_PANEL, card.rows.disp[-1] * c)  # "did not exist" placeholder
    return max(MIN_PANEL, cols.disp[-1] * c), max(MIN_PANEL, rows.disp[-1] * c)


def card_size(card: Card, c: float) -> tuple:
    bw, bh = _panel_size(card, c, "before")
    aw, ah = _panel_size(card, c, "after")
    return LEFT + bw + GAP + aw + RIGHT, TOP + max(bh, ah) + BOTTOM


def cell_size(cards: Sequence[Card], max_width: float = 13.0, max_height: float = 4.6) -> float:
    """One cell size (inches) for every card of a figure, so sizes compare across cards."""
    widest = max((c.cols_before.disp[-1] if c.cols_before else 6) + c.cols.disp[-1] for c in cards)
    tallest = max(c.rows.disp[-1] for c in cards)
    return float(min(0.24, (max_width - LEFT - GAP - RIGHT) / widest, max_height / tallest))


def _segment_label(symbol: str, lo: int, hi: int, n_old: int | None, n_new: int) -> str:
    if n_old is None or n_old == n_new:
        return f"${sym(symbol)}$={hi - lo}" if (lo, hi) == (0, n_new) else f"{hi - lo}"
    if (lo, hi) == (0, n_old):
        return f"${sym(symbol)}$={hi - lo}"
    if (lo, hi) == (n_old, n_new):
        return f"${sym(symbol, True)}-{sym(symbol)}$={hi - lo}"
    return f"{hi - lo}"


def _total_label(symbol: str, n_old: int | None, n_new: int) -> str:
    if n_old is None or n_old == n_new:
        return f"${sym(symbol)}$ = {n_new}"
    return f"${sym(symbol, True)}$ = {n_new}   (was ${sym(symbol)}$ = {n_old})"


def _heat(ax, data, rows: AxisMap, cols: AxisMap, vmax: float):
    img = data[np.ix_(rows.idx, cols.idx)]  # [cells_r, cells_c]
    return ax.imshow(
        img,
        cmap=styles.CMAP,
        vmin=-vmax,
        vmax=vmax,
        interpolation="nearest",
        extent=(0, img.shape[1], img.shape[0], 0),
        aspect="auto",
    )


def _axis_ticks(ax, m: AxisMap, symbol, n_old, which: str, side: str, override=None):
    """Segment boundaries as ticks, segment sizes as labels between them.

    ``override``: ``[(lo, hi, label)]`` source ranges (on segment boundaries) and labels.
    """
    if override:
        centers = [(m.at(lo) + m.at(hi)) / 2 for lo, hi, _ in override]
        labels = [f"{text}: {hi - lo}" for lo, hi, text in override]
    else:
        centers = [(a + b) / 2 for a, b in zip(m.disp[:-1], m.disp[1:])]
        labels = [_segment_label(symbol, lo, hi, n_old, m.bounds[-1]) for lo, hi in zip(m.bounds[:-1], m.bounds[1:])]
    if len(labels) == 1 and not override:  # one segment: the axis label says it all
        centers, labels = [], []
    if which == "x":
        ax.set_xticks(m.disp, minor=True)
        ax.set_xticks(centers)
        ax.set_xticklabels(labels, fontsize=10)
        ax.tick_params(axis="x", which="minor", length=7, width=1.2)
        ax.tick_params(axis="x", which="major", length=0)
        ax.set_xlabel(_total_label(symbol, n_old, m.bounds[-1]), fontsize=11, labelpad=2)
    else:
        ax.set_yticks(m.disp, minor=True)
        ax.set_yticks(centers)
        ax.set_yticklabels(labels, fontsize=10)
        ax.tick_params(axis="y", which="minor", length=7, width=1.2)
        ax.tick_params(axis="y", which="major", length=0)
        if side == "right":
            ax.yaxis.tick_right()
            ax.yaxis.set_label_position("right")
        ax.set_ylabel(_total_label(symbol, n_old, m.bounds[-1]), fontsize=11, labelpad=4)


def _no_y(ax):
    ax.set_yticks([])
    ax.set_yticks([], minor=True)


def draw_card(fig, card: Card, x0: float, y0: float, c: float, fw: float, fh: float):
    """Draw ``card`` with its top-left corner at ``(x0, y0)`` inches from the figure's top-left."""

    def axes(x, y, w, h):  # inches from top-left -> figure fraction
        return fig.add_axes((x / fw, 1 - (y + h) / fh, w / fw, h / fh))

    vmax = card.vmax
    bw, bh = _panel_size(card, c, "before")
    aw, ah = _panel_size(card, c, "after")
    rsym, csym = card.symbols
    top = y0 + TOP
    # title: paper symbol + position, file-format name, colour scale
    fig.text((x0 + LEFT) / fw, 1 - (y0 + 0.08) / fh, tensor_title(card.name), fontsize=14, va="top", ha="left")
    fig.text(
        (x0 + LEFT) / fw,
        1 - (y0 + 0.4) / fh,
        f"{card.name}   (colour: ±{vmax:.2g})"
        + ("   [drawn subsampled]" if card.rows.sampled or card.cols.sampled else ""),
        fontsize=9.5,
        va="top",
        ha="left",
        family="monospace",
        color="#333333",
    )
    # before
    xb = x0 + LEFT
    axb = axes(xb, top, bw, bh)
    axb.set_gid(f"before|{card.name}")
    if card.before is None:
        axb.set_xticks([])
        _no_y(axb)
        for s in axb.spines.values():
            s.set_linestyle(":")
        axb.text(
            0.5,
            0.5,
            "did not\nexist" if bh >= 0.6 else "new",
            ha="center",
            va="center",
            fontsize=10,
            transform=axb.transAxes,
        )
    else:
        _heat(axb, card.before, card.rows_before, card.cols_before, vmax)
        _axis_ticks(axb, card.cols_before, csym, None, "x", "bottom")
        if rsym is None:
            _no_y(axb)
        else:
            _axis_ticks(axb, card.rows_before, rsym, None, "y", "left", card.row_labels_before)
    # arrow
    fig.text((xb + bw + GAP / 2) / fw, 1 - (top + min(bh, ah) / 2) / fh, "→", fontsize=24, ha="center", va="center")
    # after
    xa = xb + bw + GAP
    axa = axes(xa, top, aw, ah)
    axa.set_gid(f"after|{card.name}")
    _heat(axa, card.after, card.rows, card.cols, vmax)
    n_old_c = None if card.before is None else card.before.shape[1]
    n_old_r = None if card.before is None else card.before.shape[0]
    _axis_ticks(axa, card.cols, csym, n_old_c, "x", "bottom")
    if rsym is None:
        _no_y(axa)
    else:
        _axis_ticks(axa, card.rows, rsym, n_old_r, "y", "right", card.row_labels)
    for blk in card.blocks:
        (r0, r1), (c0, c1) = _box2d(blk)
        X, Y = card.cols.at(c0), card.rows.at(r0)
        W, H = card.cols.at(c1) - X, card.rows.at(r1) - Y
        inset = 0.04 * min(W, H, 4) if blk.role != "copied" else 0.0
        styles.outline(axa, X, Y, W, H, blk.role, gid=f"{blk.role}|{blk.tensor}|{r0}:{r1},{c0}:{c1}", inset=inset)
        w_in, h_in = W / card.cols.disp[-1] * aw, H / card.rows.disp[-1] * ah
        if w_in >= 0.45 and h_in >= 0.22:
            fs = max(7.5, min(13.0, 0.55 * h_in * 72, w_in * 72 / 6))
            axa.text(
                X + W / 2,
                Y + H / 2,
                styles.block_text(blk.role, blk.factor),
                ha="center",
                va="center",
                fontsize=fs,
                fontweight="bold",
                color="black",
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85),
            )
    axa.set_xlim(0, card.cols.disp[-1])
    axa.set_ylim(card.rows.disp[-1], 0)
    return axb, axa


def _pack(sizes: Sequence[tuple], width: float) -> tuple:
    """Bottom-left packing: top-left ``(x, y)`` of each card, used width and height (inches).

    Each card goes to the highest, then leftmost, free spot within ``width`` (candidates:
    the origin and the top-right / bottom-left corners of the cards already placed).
    """
    placed: list = []  # (x, y, w, h)

    def free(x, y, w, h):
        if x + w > width + 1e-9 and x > 0:
            return False
        return all(
            x + w <= px + 1e-9 or px + pw <= x + 1e-9 or y + h <= py + 1e-9 or py + ph <= y + 1e-9
            for px, py, pw, ph in placed
        )

    pos = []
    for w, h in sizes:
        cands = (
            [(0.0, 0.0)] + [(px + pw, py) for px, py, pw, ph in placed] + [(px, py + ph) for px, py, pw, ph in placed]
        )
        x, y = min((c for c in cands if free(c[0], c[1], w, h)), key=lambda c: (c[1], c[0]))
        placed.append((x, y, w, h))
        pos.append((x, y))
    return pos, max(x + w for x, _, w, _ in placed), max(y + h for _, y, _, h in placed)


def _kinds_text(names: Sequence[str]) -> str:
    kinds: dict = {}
    for n in names:
        kinds.setdefault(parse_name(n)[0], []).append(n)
    return ", ".join(f"{k} x{len(v)}" if len(v) > 1 else v[0] for k, v in kinds.items())


def step_figure(
    before: Model,
    after: Model,
    manifest: Sequence,
    *,
    title: str = "",
    subtitle: str = "",
    notes: Sequence[str] = (),
    max_tensors: int = 6,
    max_cells: int = 64,
    max_width: float = 17.0,
):
    """The figure of one expansion step (a ``matplotlib.figure.Figure``, no pyplot state).

    Parameters
    ----------
    before, after : Model
        The model before and after the step.
    manifest : list of Block
        The step's manifest (``return_manifest=True``); it alone decides roles and blocks.
    title : str
        Figure title (e.g. the step's plan text).
    subtitle : str
        Second line (e.g. the theorem's constraint); the roles present are appended.
    notes : sequence of str
        Extra caption lines (e.g. the preservation error).
    max_tensors : int
        At most this many tensors are drawn; the caption names the others.
    max_cells : int
        Axes longer than this are drawn subsampled.
    max_width : float
        Figure width limit in inches (cards wrap onto new rows).

    Returns
    -------
    matplotlib.figure.Figure
        With two extra attributes: ``fpt_cards`` (the drawn :class:`Card` records, in
        manifest order) and ``fpt_omitted`` (names of the touched tensors not drawn). Every
        block outline carries the gid ``"role|tensor|r0:r1,c0:c1"`` and every heat-map axes
        ``"before|tensor"`` / ``"after|tensor"``.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    groups = group_manifest(manifest)
    if not groups:
        raise ValueError("manifest: empty, nothing to draw")
    groups, stacks = stack_heads(groups, before, after)
    chosen, omitted = select_tensors(groups, max_tensors)
    cards = []
    for n in chosen:
        if n in stacks:
            blocks, B, A, bb, labels, lb = stacks[n]
            cards.append(card_from_arrays(n, blocks, B, A, max_cells, bb, labels, lb))
        else:
            cards.append(make_card(n, groups[n], before, after, max_cells))
    # one card per row if that stays short enough, else narrower cards side by side
    for limit in (13.0, 8.2):
        c = cell_size(cards, max_width=min(limit, max_width))
        sizes = [card_size(cd, c) for cd in cards]
        pos, body_w, body_h = _pack(sizes, max_width)
        if body_h <= 12.0:
            break
    fw = max(body_w + 0.1, 12.0)
    lines = list(notes)
    if omitted:
        lines.append(f"Also changed, not drawn ({len(omitted)}): " + _kinds_text(omitted))
    text = "\n".join(_wrap(line, int(fw * 10.5)) for line in lines)
    head = 1.35 if subtitle else 1.0
    foot = 1.25 + 0.2 * (text.count("\n") + 1 if text else 0)
    fh = head + body_h + foot
    fig = Figure(figsize=(fw, fh), dpi=100)
    fig.text(0.012, 1 - 0.12 / fh, title, fontsize=17, fontweight="bold", va="top", ha="left")
    roles = sorted({b.role for b in manifest}, key=list(styles.ROLE_STYLE).index)
    y_sub = 0.55
    if subtitle:
        fig.text(0.012, 1 - y_sub / fh, subtitle, fontsize=12, va="top", ha="left")
        y_sub += 0.32
    fig.text(
        0.012,
        1 - y_sub / fh,
        "roles in this step (from its manifest): " + ", ".join(roles),
        fontsize=11,
        va="top",
        ha="left",
        color="#333333",
    )
    for cd, (x, y) in zip(cards, pos):
        draw_card(fig, cd, x, head + y, c, fw, fh)
    # footer: legend (2 x 2) and colour bar side by side, then the caption
    fig.legend(
        handles=styles.legend_handles(),
        loc="upper left",
        bbox_to_anchor=(0.01, (foot - 0.1) / fh),
        ncol=2,
        fontsize=12,
        frameon=False,
        handlelength=3.2,
        handleheight=1.5,
        borderaxespad=0,
        columnspacing=2.0,
    )
    cax = fig.add_axes((7.6 / fw, (foot - 0.45) / fh, min(3.6, fw - 8.2) / fw, 0.17 / fh))
    cb = fig.colorbar(ScalarMappable(Normalize(-1, 1), styles.CMAP), cax=cax, orientation="horizontal")
    cb.set_ticks([-1, 0, 1])
    cb.set_ticklabels(["−max", "0", "+max"])
    cb.ax.tick_params(labelsize=10)
    cb.set_label("heat map: value / max |value| of the tensor", fontsize=10)
    if text:
        fig.text(0.012, (foot - 1.2) / fh, text, fontsize=10.5, va="top", ha="left")
    fig.fpt_cards = cards  # for tests and callers: what was drawn
    fig.fpt_omitted = omitted
    return fig


def _wrap(line: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width)) or line

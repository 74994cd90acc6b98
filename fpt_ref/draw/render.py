"""One expansion step as a picture: the weight matrices it touches, before and after.

Each drawn tensor is a card (:mod:`fpt_ref.draw.cards`): its heat map before the step, an
arrow, and its heat map after. Every block of the step's manifest is outlined on the
"after" map in its role's style (:mod:`fpt_ref.draw.styles`), and each axis is split into
the manifest's segments, labelled with the paper's symbols (``h``, ``p``, ``p^ - p`` ...).
Which tensors are drawn: :mod:`fpt_ref.draw.selection`; where: :mod:`fpt_ref.draw.layout`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..model import Model
from . import styles
from .cards import AxisMap, Card, box2d, card_from_arrays, make_card, stack_heads
from .layout import GAP, LEFT, TOP, card_size, cell_size, pack, panel_size, wrap_line
from .selection import group_manifest, kinds_text, select_tensors
from .symbols import sym
from .symbols import title as tensor_title


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
    bw, bh = panel_size(card, c, "before")
    aw, ah = panel_size(card, c, "after")
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
        # a card's rows_before and cols_before are set together with before
        assert card.rows_before is not None and card.cols_before is not None
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
        (r0, r1), (c0, c1) = box2d(blk)
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
        pos, body_w, body_h = pack(sizes, max_width)
        if body_h <= 12.0:
            break
    fw = max(body_w + 0.1, 12.0)
    lines = list(notes)
    if omitted:
        lines.append(f"Also changed, not drawn ({len(omitted)}): " + kinds_text(omitted))
    text = "\n".join(wrap_line(line, int(fw * 10.5)) for line in lines)
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
    fig.fpt_cards = cards  # type: ignore[attr-defined]  # for tests and callers: what was drawn
    fig.fpt_omitted = omitted  # type: ignore[attr-defined]
    return fig

"""Where the cards of a step figure go: panel and card sizes, one cell size, packing (inches).

A card is its title lines, the "before" panel, an arrow and the "after" panel, both at
the same cell size so the growth is visible; cards are packed bottom-left within the
figure's width.
"""

from __future__ import annotations

from collections.abc import Sequence

from .cards import Card

LEFT, GAP, RIGHT, TOP, BOTTOM = 1.15, 0.7, 1.25, 0.72, 0.78
MIN_PANEL = 0.26  # smallest drawn panel side (vectors are one cell high)


def panel_size(card: Card, c: float, which: str) -> tuple:
    rows, cols = (card.rows, card.cols) if which == "after" else (card.rows_before, card.cols_before)
    if rows is None:
        return 0.9, max(MIN_PANEL, card.rows.disp[-1] * c)  # "did not exist" placeholder
    assert cols is not None  # a card's rows_before and cols_before are set together
    return max(MIN_PANEL, cols.disp[-1] * c), max(MIN_PANEL, rows.disp[-1] * c)


def card_size(card: Card, c: float) -> tuple:
    bw, bh = panel_size(card, c, "before")
    aw, ah = panel_size(card, c, "after")
    return LEFT + bw + GAP + aw + RIGHT, TOP + max(bh, ah) + BOTTOM


def cell_size(cards: Sequence[Card], max_width: float = 13.0, max_height: float = 4.6) -> float:
    """One cell size (inches) for every card of a figure, so sizes compare across cards."""
    widest = max((c.cols_before.disp[-1] if c.cols_before else 6) + c.cols.disp[-1] for c in cards)
    tallest = max(c.rows.disp[-1] for c in cards)
    return float(min(0.24, (max_width - LEFT - GAP - RIGHT) / widest, max_height / tallest))


def pack(sizes: Sequence[tuple], width: float) -> tuple:
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


def wrap_line(line: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width)) or line

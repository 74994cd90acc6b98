"""How each manifest role is drawn, readable in colour and in greyscale.

Every role differs from the others by line style and hatching, not only by colour, and
every outline is drawn over a white halo so it stays visible on any heat-map value:

========  ===========================  =========  ========  ============
role      meaning                      line       hatch     label inside
========  ===========================  =========  ========  ============
copied    existing block, unchanged    thin solid none      ``copied``
scaled    existing block x factor      dash-dot   dots      ``x1.22``
zero      new block constrained to 0   thick solid ``///``  ``0``
free      new block, any value         dashed     none      ``free``
========  ===========================  =========  ========  ============

The heat-map colormap is ``cividis`` (perceptually uniform, monotonic lightness, safe for
colour-vision deficiency), so values also read correctly when printed in grey.
"""

from __future__ import annotations

from typing import TypedDict

CMAP = "cividis"


class RoleStyle(TypedDict):
    """How one role is drawn (:data:`ROLE_STYLE`)."""

    color: str
    linestyle: str
    linewidth: float
    hatch: str | None
    label: str


# Okabe-Ito colour-blind-safe colours
ROLE_STYLE: dict[str, RoleStyle] = {
    "copied": dict(color="#000000", linestyle="-", linewidth=1.4, hatch=None, label="copied (unchanged)"),
    "scaled": dict(color="#D55E00", linestyle="-.", linewidth=2.8, hatch="..", label="scaled (x factor)"),
    "zero": dict(color="#0072B2", linestyle="-", linewidth=3.2, hatch="///", label="zero (constrained)"),
    "free": dict(color="#009E73", linestyle="--", linewidth=2.8, hatch=None, label="free (any value)"),
}


def block_text(role: str, factor=None) -> str:
    """The short label written inside a block of this role."""
    if role == "scaled":
        return f"x{factor:.3g}" if factor is not None else "scaled"
    return {"copied": "copied", "zero": "0", "free": "free"}[role]


def _rect(x, y, w, h, **kw):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, **kw)


def outline(ax, x, y, w, h, role: str, gid: str | None = None, inset: float = 0.0):
    """Draw the outline (and hatching) of one block in data coordinates; returns the patches.

    ``(x, y)`` is the top-left corner in display cells (the image axis runs downwards).
    The outline patch carries ``gid`` so that tests can find it.
    """
    st = ROLE_STYLE[role]
    x, y, w, h = x + inset, y + inset, w - 2 * inset, h - 2 * inset
    patches = []
    if st["hatch"]:
        kw = dict(fill=False, hatch=st["hatch"], linewidth=0, edgecolor="#000000" if role == "zero" else "#ffffff")
        try:  # matplotlib >= 3.10 has a separate hatch colour
            p = _rect(x, y, w, h, hatchcolor=kw["edgecolor"], **kw)
        except (AttributeError, TypeError):
            p = _rect(x, y, w, h, **kw)
        patches.append(ax.add_patch(p))
    halo = _rect(x, y, w, h, fill=False, edgecolor="white", linewidth=st["linewidth"] + 2.2, linestyle="-")
    patches.append(ax.add_patch(halo))
    line = _rect(x, y, w, h, fill=False, edgecolor=st["color"], linewidth=st["linewidth"], linestyle=st["linestyle"])
    line.set_gid(gid)
    patches.append(ax.add_patch(line))
    return patches


def legend_handles():
    """Legend entries (one per role) with the same line style and hatch as the blocks."""
    from matplotlib.patches import Patch

    out = []
    for role, st in ROLE_STYLE.items():
        face = "#9a9a9a" if role in ("zero", "scaled") else "white"
        out.append(
            Patch(
                facecolor=face,
                edgecolor=st["color"],
                linestyle=st["linestyle"],
                linewidth=st["linewidth"],
                hatch=st["hatch"],
                label=st["label"],
            )
        )
    return out

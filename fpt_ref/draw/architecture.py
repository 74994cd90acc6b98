"""The whole model as a diagram, before and after a plan: layers, heads and their dims.

Which layers and heads are new is read from the steps' manifests (a layer or head all of
whose tensors are new blocks was added by that step); grown dimensions are marked with
the paper's hat (``p^``) and set in bold; new layers and heads are outlined in the
``free`` style and list the blocks their manifest constrains to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..model import Model, named_tensors, param_count
from ..names import head_prefix, layer_prefix
from . import styles
from .selection import group_manifest, is_new_tensor
from .symbols import TENSORS, parse_name

MAX_HEADS = 8
MAX_LAYERS = 10


@dataclass
class LayerInfo:
    """Where a layer of the final model comes from."""

    origin: int | None  # index in the original model, None if added
    added_by: int | None = None  # plan step that added it
    heads: list = field(default_factory=list)  # per head: (origin head index or None, step or None)
    zero: set = field(default_factory=set)  # kinds constrained to zero by the step that added it


def track(before: Model, models: Sequence[Model], manifests: Sequence[Sequence]) -> list:
    """Follow every layer and head through the plan; one :class:`LayerInfo` per final layer.

    ``models[i]`` is the model after step ``i`` and ``manifests[i]`` that step's manifest.
    """
    if len(models) != len(manifests):
        raise ValueError(f"models, manifests: one manifest per model expected, got {len(models)} and {len(manifests)}")
    state = [LayerInfo(n, None, [(e, None) for e in range(L.E)]) for n, L in enumerate(before.layers)]
    for i, (m, man) in enumerate(zip(models, manifests)):
        groups = group_manifest(man)
        new = {name for name, blocks in groups.items() if is_new_tensor(blocks)}
        names = list(named_tensors(m))

        def all_new(prefix, names=names, new=new):
            own = [t for t in names if t.startswith(prefix)]
            return bool(own) and all(t in new for t in own)

        for n in range(m.N):
            if all_new(layer_prefix(n) + ".") and len(state) < m.N:
                zero = {
                    parse_name(t)[0]
                    for t, bl in groups.items()
                    if t.startswith(layer_prefix(n) + ".") and any(b.role == "zero" for b in bl)
                }
                state.insert(n, LayerInfo(None, i, [(None, i)] * m.layers[n].E, zero))
        if len(state) != m.N:
            raise ValueError(f"manifests: cannot account for the layers of step {i} (N={m.N})")
        for n, info in enumerate(state):
            E = m.layers[n].E
            if info.origin is None and info.added_by == i:
                continue
            heads = []
            old = iter(info.heads)
            for e in range(E):
                heads.append((None, i) if all_new(head_prefix(n, e) + ".") else next(old))
            info.heads = heads
    return state


def _heads_shown(heads: list) -> list:
    """Indices of the heads drawn in a layer: all if few, else old ones first and every new one kept."""
    if len(heads) <= MAX_HEADS:
        return list(range(len(heads)))
    room = MAX_HEADS - 1  # one chip says "+n more"
    new = [e for e, (orig, _) in enumerate(heads) if orig is None][: room // 2]
    old = [e for e in range(len(heads)) if e not in new][: room - len(new)]
    return sorted(old + new)


def _fmt_dim(symbol: str, new: int, old: int | None) -> tuple:
    """(mathtext label, grown?)"""
    if old is None or old == new:
        return f"${symbol}$={new}", False
    return rf"$\hat{{{symbol}}}$={new}", True


def model_figure(before: Model, after: Model, models: Sequence[Model], manifests: Sequence[Sequence], title: str = ""):
    """Diagram of ``before`` and ``after`` side by side (a ``matplotlib.figure.Figure``).

    ``models``/``manifests``: every step's resulting model and manifest (to tell new layers
    and heads from old ones); ``title``: a line under the heading (e.g. the plan).
    The figure's attribute ``fpt_layers`` holds the :class:`LayerInfo` of every final layer;
    layer and head boxes carry gids ``"layer|before/after|n|new/old"`` and
    ``"head|before/after|n|e|new/old"``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    info_after = track(before, models, manifests)
    info_before = [LayerInfo(n, None, [(e, None) for e in range(L.E)]) for n, L in enumerate(before.layers)]
    max_e = min(MAX_HEADS, max([L.E for L in after.layers + before.layers] or [1]))
    chip_w, chip_gap, mlp_w = 1.25, 0.18, 1.9
    left = 2.0
    layer_w = left + max_e * (chip_w + chip_gap) + 0.4 + mlp_w + 0.4
    layer_h, gap = 1.75, 0.55

    def shown(n_layers):
        if n_layers <= MAX_LAYERS:
            return list(range(n_layers))
        return list(range(MAX_LAYERS // 2)) + [None] + list(range(n_layers - MAX_LAYERS // 2 + 1, n_layers))

    rows = max(len(shown(before.N)), len(shown(after.N)))
    height = 2 * 1.2 + rows * (layer_h + gap) + 0.6
    fig = Figure(figsize=(2 * layer_w * 0.95 + 1.0, height * 0.95 + 1.6), dpi=100)
    import textwrap

    fig.text(0.015, 0.985, "Model before and after the plan", fontsize=18, fontweight="bold", va="top")
    if title:
        fig.text(
            0.015,
            0.985 - 0.45 / fig.get_figheight(),
            "\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 9))),
            fontsize=12,
            va="top",
            family="monospace",
        )

    def box(ax, x, y, w, h, text, *, style="copied", fs=11, bold=False, face="white", gid=None):
        st = styles.ROLE_STYLE[style]
        lw = 1.3 if style == "copied" else st["linewidth"]
        p = FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=face,
            edgecolor=st["color"],
            linestyle=st["linestyle"],
            linewidth=lw,
        )
        p.set_gid(gid)
        ax.add_patch(p)
        if text:
            ax.text(
                x + w / 2,
                y + h / 2,
                text,
                ha="center",
                va="center",
                fontsize=fs,
                fontweight="bold" if bold else "normal",
            )
        return p

    for col, (m, infos, label) in enumerate(((before, info_before, "before"), (after, info_after, "after"))):
        ax = fig.add_axes((0.02 + col * 0.49, 0.04, 0.47, 0.96 - 1.5 / fig.get_figheight()))
        ax.set_xlim(-0.2, layer_w + 0.2)
        ax.set_ylim(-0.2, height)
        ax.set_axis_off()
        ax.set_gid(f"model|{label}")
        hdims, hgrow = _fmt_dim("h", m.h, before.h if col else None)
        eps_txt = f"ε={m.norm_eps:.2g}" if m.norm_eps else "ε=0"
        if col and m.norm_eps != before.norm_eps:
            eps_txt = rf"$\hat{{\epsilon}}$={m.norm_eps:.2g}"
        ax.text(
            0,
            height - 0.1,
            f"{label}:  {hdims}   N={m.N}   {eps_txt}   {param_count(m)} parameters",
            fontsize=13,
            va="top",
            fontweight="bold" if hgrow else "normal",
        )
        # input and output
        inp = "$X_1 = I + P$" + (f"    vocab={m.vocab}" if m.vocab else "") + f"   $s_{{max}}$={m.s_max}   {hdims}"
        box(ax, 0, 0, layer_w, 0.9, inp, fs=12)
        y = 1.2
        for n in shown(m.N):
            if n is None:
                ax.text(
                    layer_w / 2,
                    y + layer_h / 2,
                    f"⋮  {m.N - MAX_LAYERS + 1} more layers",
                    ha="center",
                    va="center",
                    fontsize=13,
                )
                y += layer_h + gap
                continue
            L, info = m.layers[n], infos[n]
            src = before.layers[info.origin] if info.origin is not None else None
            new_layer = info.origin is None
            box(
                ax,
                0,
                y,
                layer_w,
                layer_h,
                "",
                style="free" if new_layer else "copied",
                face="#f2f2f2",
                gid=f"layer|{label}|{n}|{'new' if new_layer else 'old'}",
            )
            name = f"layer {n}"
            if new_layer:
                name += f"\nNEW, step {info.added_by + 1}"
            elif col and info.origin != n:
                name += f"\n(was {info.origin})"
            ax.text(
                0.1, y + layer_h - 0.12, name, fontsize=11.5, va="top", fontweight="bold" if new_layer else "normal"
            )
            if new_layer and info.zero:
                syms = [TENSORS[k][0].replace(",e", "") for k in sorted(info.zero, key=list(TENSORS).index)]
                ax.text(0.1, y + 0.1, "zero:\n" + ", ".join(syms), fontsize=10.5, va="bottom")
            # heads
            x = left
            ax.text(x, y + layer_h - 0.1, f"MHA: E={L.E} heads", fontsize=10.5, va="top")
            for e in _heads_shown(info.heads):
                hd = L.heads[e]
                horig, hstep = info.heads[e]
                old = src.heads[horig] if (src is not None and horig is not None) else None
                kt, kg = _fmt_dim("k", hd.k, old.k if old else None)
                vt, vg = _fmt_dim("v", hd.v, old.v if old else None)
                is_new = horig is None
                box(
                    ax,
                    x,
                    y + 0.22,
                    chip_w,
                    layer_h - 0.72,
                    f"{kt}\n{vt}",
                    style="free" if is_new else "copied",
                    fs=12,
                    bold=kg or vg,
                    gid=f"head|{label}|{n}|{e}|{'new' if is_new else 'old'}",
                )
                if is_new and not new_layer:
                    ax.text(x + chip_w / 2, y + 0.08, "new", ha="center", fontsize=9, fontweight="bold")
                x += chip_w + chip_gap
            if L.E > MAX_HEADS:
                box(ax, x, y + 0.22, chip_w, layer_h - 0.72, f"+{L.E - MAX_HEADS + 1}\nmore", fs=11)
            # MLP
            xm = layer_w - mlp_w - 0.3
            pt, pg = _fmt_dim("p", L.p, src.p if (src is not None and col) else None)
            box(ax, xm, y + 0.22, mlp_w, layer_h - 0.72, f"MLP\n{pt}", fs=13, bold=pg, gid=f"mlp|{label}|{n}")
            y += layer_h + gap
        ot, og = _fmt_dim("h", m.h, before.h if col else None)
        box(ax, 0, y, layer_w, 0.9, f"Output $= X_{{N+1}} W_{{out}}$    $W_{{out}}$: {ot} x $o$={m.o}", fs=12, bold=og)
    fig.legend(
        handles=[styles.legend_handles()[0], styles.legend_handles()[3]],
        labels=["existing layer / head", "new layer / head (added by a step)"],
        loc="lower right",
        bbox_to_anchor=(0.985, 0.0),
        fontsize=11,
        ncol=2,
        frameon=False,
        handlelength=3,
        handleheight=1.5,
    )
    fig.text(0.02, 0.012, r"bold with a hat ($\hat{p}$, $\hat{k}$, ...) = dimension grown by the plan", fontsize=11)
    fig.fpt_layers = info_after  # type: ignore[attr-defined]  # documented attribute, read by callers
    return fig

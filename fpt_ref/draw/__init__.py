"""Figures of the expansions (``fpt-ref draw``, :mod:`fpt_ref.draw.cli`).

For each plan step, a PNG of the tensors that step touches, before and after, with every
manifest block outlined by role (:func:`step_figure`, :mod:`fpt_ref.draw.render`); and one
diagram of the whole model before and after (:mod:`fpt_ref.draw.architecture`). matplotlib
is imported only when drawing.
"""

from __future__ import annotations

import os
import re

from ..paper import EXPANSIONS
from .render import step_figure

__all__ = ["caption", "draw_plan", "draw_results", "run_for_drawing", "step_figure"]


def caption(op: str) -> tuple:
    """``(theorem, constraint)`` lines of a step figure for expansion ``op``, from :mod:`fpt_ref.paper`.

    >>> caption("mlp")
    ('Theorem 3.1, MLP expansion', 'constraint: M_l2 = 0')
    """
    row = EXPANSIONS[op]
    return f"{row.theorem}, {row.title}", f"constraint: {row.constraint}"


def run_for_drawing(model, plan, *, init="normal", seed: int = 0, check: bool = True) -> list:
    """``run_plan`` as the figures use it: preservation checked on 2 sequences of at most 8
    positions (enough to catch a broken step, whose error is then far above the tolerance;
    cheap for large models)."""
    from ..plan import run_plan

    return run_plan(model, plan, init=init, seed=seed, check=check, batch=2, seq=min(8, model.s_max))


def draw_results(model, results, out_dir: str, *, max_tensors: int = 6, dpi: int = 100) -> list:
    """One PNG per step of ``results`` (from :func:`run_for_drawing`) plus ``model.png``; returns the paths.

    Files: ``step{i}_{op}.png`` (i from 1) and ``model.png``. Each caption gives the step's
    preservation error of the composition so far when the plan was run with ``check``.

    ``out_dir`` is missing, empty, or a folder holding only figures of this function: it is
    replaced as a whole once every figure is drawn (:func:`fpt_ref.files.replace_directory`),
    so no figure of an older, longer plan survives; any other folder is refused before drawing.
    """
    from ..files import replace_directory

    with replace_directory(out_dir, is_figures_dir, name="out_dir") as tmp:
        paths = _draw_into(tmp, model, results, max_tensors, dpi)
    return [os.path.join(out_dir, os.path.basename(p)) for p in paths]


_FIGURE = re.compile(r"^(step[0-9]+_[a-z_]+|model)\.png$")


def is_figures_dir(path: str) -> bool:
    """Whether every entry of folder ``path`` is a figure :func:`draw_results` writes."""
    try:
        return all(_FIGURE.match(name) and os.path.isfile(os.path.join(path, name)) for name in os.listdir(path))
    except OSError:
        return False


def check_out_dir(out_dir: str) -> None:
    """``ValueError`` (``out_dir: ...``) when ``out_dir`` cannot take the figures, before any work."""
    real = os.path.realpath(os.fspath(out_dir))
    if os.path.exists(real):
        if not os.path.isdir(real):
            raise ValueError(f"out_dir: {out_dir} exists and is not a directory")
        if os.listdir(real) and not is_figures_dir(real):
            raise ValueError(f"out_dir: {out_dir} is not empty and does not hold only figures of fpt-ref draw")
    elif not os.path.isdir(os.path.dirname(real)):
        raise ValueError(f"out_dir: folder {os.path.dirname(real)} does not exist")


def _savefig(fig, path: str, dpi: int) -> str:
    from ..files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), name="out_dir")
    return path


def _draw_into(out_dir: str, model, results, max_tensors: int, dpi: int) -> list:
    from ..model import dims_summary
    from .architecture import model_figure

    paths = []
    prev = model
    for i, r in enumerate(results, 1):
        summary = dims_summary(r.model)
        notes = [f"dims after: {summary if len(summary) <= 240 else summary[:237] + '...'}"]
        if r.error is not None:
            e = r.error
            notes.append(
                f"preservation (whole plan so far vs original model): max error {e['max_abs']:.2g} "
                f"= {e['max_ulp']:.1f} ulp, tolerance {e['tol_ulp']:.0f} ulp: "
                + ("preserved" if e["ok"] else "NOT preserved")
            )
        if r.step.op == "hidden" and prev.norm_eps:
            notes.append(
                f"norm epsilon rescaled by h/h^: {prev.norm_eps:.3g} -> {r.model.norm_eps:.3g} (docs/spec.md trap 2)"
            )
        theorem, constraint = caption(r.step.op)
        fig = step_figure(
            prev,
            r.model,
            r.manifest,
            title=f"Step {i}: {r.step}   ({theorem})",
            subtitle=constraint,
            notes=notes,
            max_tensors=max_tensors,
        )
        paths.append(_savefig(fig, os.path.join(out_dir, f"step{i}_{r.step.op}.png"), dpi))
        prev = r.model
    fig = model_figure(
        model,
        results[-1].model,
        [r.model for r in results],
        [r.manifest for r in results],
        title="plan: " + "; ".join(str(r.step) for r in results),
    )
    paths.append(_savefig(fig, os.path.join(out_dir, "model.png"), dpi))
    return paths


def draw_plan(
    model, plan, out_dir: str, *, init="normal", seed: int = 0, max_tensors: int = 6, check: bool = True, dpi: int = 100
) -> list:
    """Run ``plan`` on ``model`` and write one PNG per step plus ``model.png``; returns the paths."""
    check_out_dir(out_dir)
    results = run_for_drawing(model, plan, init=init, seed=seed, check=check)
    return draw_results(model, results, out_dir, max_tensors=max_tensors, dpi=dpi)

"""Figures of the expansions: ``fpt-ref draw MODEL --plan "..." -o DIR``.

For each plan step, a PNG of the tensors that step touches, before and after, with every
manifest block outlined by role (:mod:`fpt_ref.draw.blocks`); and one diagram of the whole
model before and after (:mod:`fpt_ref.draw.architecture`). matplotlib is imported only
when drawing.
"""

from __future__ import annotations

import os

THEOREMS = {  # op -> (theorem, its constraint as PAPER.md states it)
    "mlp": ("Theorem 3.1, MLP expansion", "constraint: M_l2 = 0"),
    "add_heads": ("Theorem 3.2, head addition", "constraint: M_O = 0"),
    "heads": ("Theorem 3.3, heads expansion", "constraint: M_O,e = 0"),
    "attention": (
        "Theorem 3.4, attention expansion",
        "constraint: M_K,e = 0 and W_K,e x sqrt(k^/k) (or mirror: M_Q, W_Q)",
    ),
    "hidden": (
        "Theorem 3.5, hidden dimension expansion",
        "constraint: new columns of I, P, W_O, W_l2, b_l2 = 0; g x sqrt(h/h^); eps x h/h^",
    ),
    "add_layer": ("Theorem 3.6, layer addition", "constraint: new layer's W_O = 0, W_l2 = 0, b_l2 = 0"),
}


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
    """
    from ..model import dims_summary
    from .architecture import model_figure
    from .blocks import step_figure

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"-o: {out_dir!r} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
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
                f"norm epsilon rescaled by h/h^: {prev.norm_eps:.3g} -> {r.model.norm_eps:.3g} (PAPER.md trap 2)"
            )
        fig = step_figure(
            prev,
            r.model,
            r.manifest,
            title=f"Step {i}: {r.step}   ({THEOREMS[r.step.op][0]})",
            subtitle=THEOREMS[r.step.op][1],
            notes=notes,
            max_tensors=max_tensors,
        )
        path = os.path.join(out_dir, f"step{i}_{r.step.op}.png")
        fig.savefig(path, dpi=dpi)
        paths.append(path)
        prev = r.model
    fig = model_figure(
        model,
        results[-1].model,
        [r.model for r in results],
        [r.manifest for r in results],
        title="plan: " + "; ".join(str(r.step) for r in results),
    )
    path = os.path.join(out_dir, "model.png")
    fig.savefig(path, dpi=dpi)
    paths.append(path)
    return paths


def draw_plan(
    model, plan, out_dir: str, *, init="normal", seed: int = 0, max_tensors: int = 6, check: bool = True, dpi: int = 100
) -> list:
    """Run ``plan`` on ``model`` and write one PNG per step plus ``model.png``; returns the paths."""
    results = run_for_drawing(model, plan, init=init, seed=seed, check=check)
    return draw_results(model, results, out_dir, max_tensors=max_tensors, dpi=dpi)


def cmd_draw(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from ..cli import DEMO_MODEL, DEMO_PLAN
    from ..init import init_model
    from ..io import load

    if args.model == "demo" and not os.path.exists(args.model):
        model = init_model(**DEMO_MODEL)
        plan = DEMO_PLAN if args.plan is None else args.plan
    else:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"MODEL: no such model file {args.model!r} (or use 'demo')")
        model = load(args.model)
        if args.plan is None:
            raise ValueError("--plan: required unless MODEL is 'demo'")
        plan = args.plan
    if args.dpi > 600:
        raise ValueError(f"--dpi: at most 600, got {args.dpi}")
    if args.max_tensors < 1:
        raise ValueError(f"--max-tensors: must be at least 1, got {args.max_tensors}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"-o: {args.out!r} exists and is not a directory")
    results = run_for_drawing(model, plan, init=args.init, seed=args.seed, check=not args.no_check)
    paths = draw_results(model, results, args.out, max_tensors=args.max_tensors, dpi=args.dpi)
    for p in paths:
        print(f"wrote {p}")
    broken = [str(r.step) for r in results if r.error is not None and not r.error["ok"]]
    if broken:
        print(f"NOT preserved after: {'; '.join(broken)}")
    return 1 if broken else 0


def register(subparsers) -> None:
    """Add ``fpt-ref draw`` (cheap: matplotlib is imported only when the command runs)."""
    from ..cli import int_arg

    s = subparsers.add_parser("draw", help="figures of each plan step (blocks by role) and of the whole model")
    s.add_argument("model", help="model file, or 'demo' for the built-in demo model (and demo plan)")
    s.add_argument(
        "--plan", default=None, help="';'-separated steps or a JSON file (default for 'demo': the demo plan)"
    )
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.add_argument("--init", choices=["normal", "zeros"], default="normal")
    s.add_argument("--seed", type=int_arg("--seed", 0), default=0)
    s.add_argument("--max-tensors", type=int_arg("--max-tensors"), default=6, help="tensors drawn per step (default 6)")
    s.add_argument("--dpi", type=int_arg("--dpi", 10), default=100, help="10-600 (default 100)")
    s.add_argument("--no-check", action="store_true", help="do not verify preservation per step")
    s.set_defaults(func=cmd_draw)

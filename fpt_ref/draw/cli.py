"""``fpt-ref draw MODEL --plan "..." -o DIR``: the sub-command of :mod:`fpt_ref.draw`.

``register`` is cheap: matplotlib and the drawing code are imported when the command runs.
"""

from __future__ import annotations

import os

from ..cli_args import int_arg


def cmd_draw(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from ..demo import DEMO_PLAN, demo_model
    from ..io import load
    from . import check_out_dir, draw_results, run_for_drawing

    try:
        check_out_dir(args.out)  # before loading or drawing anything
    except ValueError as exc:
        raise ValueError("-o" + str(exc)[len("out_dir") :]) from None

    if args.model == "demo" and not os.path.exists(args.model):
        model = demo_model()
        plan = DEMO_PLAN if args.plan is None else args.plan
    else:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"MODEL: no such model file {args.model!r} (or use 'demo')")
        model = load(args.model)
        if args.plan is None:
            raise ValueError("--plan: required unless MODEL is 'demo'")
        plan = args.plan
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
    s = subparsers.add_parser("draw", help="figures of each plan step (blocks by role) and of the whole model")
    s.add_argument("model", help="model file, or 'demo' for the built-in demo model (and demo plan)")
    s.add_argument(
        "--plan", default=None, help="';'-separated steps or a JSON file (default for 'demo': the demo plan)"
    )
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.add_argument("--init", choices=["normal", "zeros"], default="normal")
    s.add_argument("--seed", type=int_arg(0), default=0)
    s.add_argument("--max-tensors", type=int_arg(1), default=6, help="tensors drawn per step (default 6)")
    s.add_argument("--dpi", type=int_arg(10, 600), default=100, help="10-600 (default 100)")
    s.add_argument("--no-check", action="store_true", help="do not verify preservation per step")
    s.set_defaults(func=cmd_draw)

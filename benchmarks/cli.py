"""``fpt-ref bench``: the benchmark command (also ``python -m fpt_ref.benchmarks``).

``register`` only adds the sub-parser; NumPy-heavy modules, matplotlib, CuPy and PyTorch
are imported when the command runs.
"""

from __future__ import annotations

import argparse
import os

from fpt_ref.cli_args import int_arg

DEFAULT_OUT = "bench-results"


def _list(choices=None):
    """An argparse ``type`` for comma-separated values (argparse names the option in its message)."""

    def conv(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("needs at least one value")
        bad = [t for t in items if choices is not None and t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)} (choose from {', '.join(choices)})")
        return items

    return conv


def add_arguments(s) -> None:
    """The options of ``fpt-ref bench`` (and ``python -m fpt_ref.benchmarks``) on the parser ``s``."""
    from .ops import ARCH_RULES, ARCHS, OPS  # light: fpt_ref and NumPy only
    from .runner import BACKENDS

    s.add_argument("--quick", action="store_true", help="tiny ladder, few repeats (under a minute on 2 cores)")
    s.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder for results.json, table.md, *.png (default {DEFAULT_OUT})"
    )
    s.add_argument(
        "--backends",
        type=_list(list(BACKENDS)),
        default=list(BACKENDS),
        help=f"comma-separated: {','.join(BACKENDS)} (unusable ones are skipped with a note; "
        "transformers: the llama and qwen2 architectures, CPU)",
    )
    s.add_argument(
        "--arch",
        choices=list(ARCHS),
        default="paper",
        help=f"architecture of every model (default paper; {ARCH_RULES})",
    )
    s.add_argument(
        "--ladder",
        choices=["quick", "cpu", "gpu"],
        default=None,
        help="size ladder (default: quick with --quick, gpu when a GPU is usable, else cpu)",
    )
    s.add_argument("--sizes", type=_list(), default=None, help="only these ladder sizes (names)")
    s.add_argument("--dtypes", type=_list(["float32", "float64"]), default=["float32", "float64"])
    s.add_argument("--ops", type=_list(list(OPS)), default=list(OPS), help=f"comma-separated from {','.join(OPS)}")
    s.add_argument("--repeats", type=int_arg(1), default=None, help="exact number of timed rounds")
    s.add_argument(
        "--blas-threads",
        type=int_arg(1),
        default=None,
        help="OpenBLAS and PyTorch CPU threads (default: the libraries' own)",
    )
    s.add_argument(
        "--one-thread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the CPU forward with one BLAS / PyTorch thread, alternating with the default (default: on)",
    )
    s.add_argument(
        "--time-budget",
        type=int_arg(1),
        default=None,
        metavar="SECONDS",
        help="start no new size, backend and dtype after this many seconds (default: no limit)",
    )
    s.add_argument(
        "--max-params-cpu",
        type=int_arg(1),
        default=None,
        help="largest model NumPy runs (default: all of the ladder; 500M on the gpu ladder)",
    )


def register(subparsers) -> None:
    """Add ``fpt-ref bench`` to the ``fpt-ref`` command line."""
    s = subparsers.add_parser("bench", help="benchmarks: NumPy vs CuPy vs PyTorch, with roofline ratios")
    add_arguments(s)
    s.set_defaults(func=cmd_bench)


def config_from_args(args, gpu_usable: bool):
    from .runner import Config

    kw = dict(
        backends=tuple(args.backends),
        dtypes=tuple(args.dtypes),
        ops=tuple(args.ops),
        sizes=args.sizes,
        blas_threads=args.blas_threads,
        one_thread=args.one_thread,
        time_budget_s=args.time_budget,
        arch=args.arch,
    )
    ladder = args.ladder or ("quick" if args.quick else ("gpu" if gpu_usable else "cpu"))
    kw["ladder"] = ladder
    cfg = Config.quick(**kw) if args.quick else Config(**kw)
    if args.repeats is not None:
        cfg.min_repeats = cfg.max_repeats = args.repeats
    cap = args.max_params_cpu if args.max_params_cpu is not None else (500_000_000 if ladder == "gpu" else None)
    if cap is not None:
        cfg.max_params["numpy"] = cap
    return cfg


def check_out_dir(out: str) -> None:
    """``ValueError`` naming ``--out`` when ``out`` is not a writable folder or one that can be created."""
    real = os.path.realpath(out)
    if os.path.exists(real):
        if not os.path.isdir(real):
            raise ValueError(f"--out: {out} exists and is not a directory")
        if not os.access(real, os.W_OK | os.X_OK):
            raise ValueError(f"--out: {out} is not writable")
        return
    parent = os.path.dirname(real)
    while not os.path.exists(parent):  # created with its missing parents, like mkdir -p
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot create {out} ({parent} is not a writable folder)")


def cmd_bench(args) -> int:
    from . import machine, report, runner

    gpu_usable = "cupy" in args.backends and machine.cupy_status()[0] is not None
    cfg = config_from_args(args, gpu_usable)
    # check --out before measuring, so a bad path does not throw a long run away; it is
    # created only once there is something to write, so a rejected run leaves no folder
    check_out_dir(args.out)
    results = runner.run(cfg)
    if not results.get("records"):
        raise ValueError(
            "nothing was measured: every size or backend was excluded (see --sizes, --backends, --max-params-cpu)"
        )
    paths = report.write_all(results, args.out)
    print(report.markdown_table(results))
    print("wrote " + ", ".join(paths))
    return 0

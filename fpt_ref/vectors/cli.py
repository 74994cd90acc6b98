"""``fpt-ref vectors`` and ``fpt-ref compare``: the sub-commands of :mod:`fpt_ref.vectors`.

``register`` stays cheap: the work is imported only when a command runs.
"""

from __future__ import annotations

from ..cli_args import int_arg


def cmd_vectors(args) -> int:
    import time

    from .cases import load_config, parse_archs
    from .write import write_vectors

    archs = parse_archs(args.arch)  # already checked by _archs
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    index = write_vectors(args.out, cfg, seed=args.seed, archs=archs, hf=args.hf)
    what = "" if archs == ("paper",) else f", {'/'.join(archs)}"
    folders = f", {sum(1 for e in index if e['hf'])} Hugging Face folders" if args.hf else ""
    print(
        f"wrote {len(index)} cases ({cfg.name} config, seed {args.seed}{what}{folders}) to {args.out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_compare(args) -> int:
    import json

    from .compare import compare, format_report

    report = compare(args.case_dir, args.actual, require_residuals=args.require_residuals)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 0 if report.ok else 1


def _archs(text: str):
    """``--arch``: the architectures' names (:func:`fpt_ref.vectors.cases.parse_archs`), checked while parsing."""
    import argparse

    from .cases import parse_archs

    try:
        return ",".join(parse_archs(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


def register(subparsers) -> None:
    """Add ``vectors`` and ``compare`` to the ``fpt-ref`` command line."""
    s = subparsers.add_parser("vectors", help="write reference vectors (one directory per case)")
    s.add_argument("--config", default="tiny", help="tiny, small, or a JSON file of dimensions (default tiny)")
    s.add_argument("--seed", type=int_arg(0), default=0)
    s.add_argument(
        "--arch",
        type=_archs,
        default="paper",
        help="families by architecture: paper (default: the paper's model), llama, qwen2, gpt2, "
        "comma-separated, or all",
    )
    s.add_argument(
        "--hf",
        action="store_true",
        help="also write each llama, qwen2 or gpt2 case a Hugging Face config can express as a checkpoint "
        "folder CASE/hf (float64; the manifest says why a case has none)",
    )
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.set_defaults(func=cmd_vectors)

    s = subparsers.add_parser("compare", help="compare tensors of another implementation with a case")
    s.add_argument("case_dir", help="a case directory written by 'fpt-ref vectors'")
    s.add_argument("actual", help=".safetensors or .npz with 'output' and 'residual.{n}'")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument(
        "--require-residuals",
        action="store_true",
        help="fail when ACTUAL lacks a residual stream (default: only 'output' is required)",
    )
    s.set_defaults(func=cmd_compare)

"""``fpt-ref prove``: machine-checked proofs of the six theorems, epsilon and composition.

``register`` is cheap: SymPy is imported only when the command runs. Theorem names come
from :mod:`fpt_ref.paper` (the six expansions) plus the proofs-only ``eps`` and ``compose``.
"""

from __future__ import annotations

from fpt_ref.paper import NAMES as _SIX

NAMES = list(_SIX) + ["eps", "compose"]
_FLAGS = {"zero": "--zero", "scale": "--scale", "sizes": "--size", "theorem": "THEOREM"}


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "prove",
        help="prove the expansions preserve the function (SymPy): both levels, minimality, composition",
        description="Prove Theorems 3.1-3.6 (" + ", ".join(_SIX) + "), the epsilon rescaling (eps) and the "
        "composition of all six (compose), at symbolic sizes (generated, machine-glued lemma chains) and at "
        "explicit entries (two size assignments), and cross-check the symbolic models against fpt_ref.forward; "
        "and the recipes of real architectures (fpt_ref.blocks.RECIPES: mlp/glu, attention/rope, hidden/layernorm, ...; "
        "--variants runs them all), refuting the wrong ones (fpt_ref.blocks.WRONG_RECIPES). "
        "Exit 0 when every claim is proved, 1 when one is refuted or not proved, 2 on bad usage.",
    )
    s.add_argument("theorems", nargs="*", metavar="THEOREM", help=f"any of: {', '.join(NAMES)}")
    s.add_argument(
        "--all",
        action="store_true",
        help="every theorem and every real-architecture claim, with minimality (dropped constraints, minimal sets)",
    )
    s.add_argument(
        "--variants",
        action="store_true",
        help="every real-architecture claim (blocks of docs/spec.md section 4: glu, rope, gqa, layernorm, ...)",
    )
    s.add_argument("--minimal", action="store_true", help="also drop each constraint and search all minimal sets")
    s.add_argument("--zero", metavar="BLOCK[,BLOCK...]|none", help="your own set of zero blocks (one theorem)")
    s.add_argument("--scale", metavar="W_K|W_Q|g|eps|none", help="your own scalings (one theorem)")
    s.add_argument(
        "--size",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="entry-level size (s, h, p, E, k, v, o, N, or a grown one: h_new, p_new, k_new, v_new, E_new, N_new); "
        "repeatable; replaces the two default size assignments by one",
    )
    s.add_argument("--list-blocks", metavar="THEOREM", help="list a theorem's new blocks and scalings, then exit")
    s.add_argument("--chains", action="store_true", help="print the proof chains as plain text")
    s.add_argument("--json", action="store_true", help="print one JSON record per claim instead of the text report")
    s.add_argument("--latex", metavar="FILE", help="write the proof chains as a LaTeX document")
    s.add_argument("--markdown", metavar="FILE", help="write the results, chains and counterexamples as Markdown")
    s.set_defaults(func=cmd_prove)


def _variant_names() -> tuple[list, dict]:
    from .variants import BY_NAME, groups

    return groups(), BY_NAME


def _check_name(name: str) -> str:
    if name in NAMES:
        return name
    groups, claims = _variant_names()
    if name not in groups and name not in claims:
        raise ValueError(
            f"THEOREM: unknown theorem {name!r}; choose from {', '.join(NAMES)}, a real-architecture claim "
            f"({', '.join(groups[:3])}, ...; --variants runs them all) or one of its sub-claims (mlp/glu:up)"
        )
    return name


def list_blocks(theorem: str) -> str:
    from .expand import BLOCKS, PAPER, SCALINGS

    _check_name(theorem)
    if theorem == "compose":
        return "compose: no blocks of its own; it applies every theorem with the paper's constraints"
    zero, scale = PAPER[theorem]
    lines = [
        f"{theorem}: new blocks (paper: zero {', '.join(sorted(zero))}; scalings {', '.join(sorted(scale)) or 'none'})"
    ]
    for name, desc in BLOCKS[theorem].items():
        lines.append(f"  {name:<8} {'zero' if name in zero else 'free':<5} {desc}")
    for name, desc in SCALINGS[theorem].items():
        lines.append(f"  scale {name:<4} {'on' if name in scale else 'off':<5} {desc}")
    return "\n".join(lines)


def _parse_sizes(items: list[str]) -> dict:
    from fpt_ref.checks import parse_int

    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--size: expected NAME=VALUE, got {item!r}")
        if name.strip() in out:
            raise ValueError(f"--size: {name.strip()} given twice")
        out[name.strip()] = parse_int(f"--size {name.strip()}", value.strip())
    return out


def _flagged(e: ValueError) -> ValueError:
    """A library error (``zero: ...``) worded for the command line (``--zero: ...``)."""
    msg = str(e)
    head, sep, rest = msg.partition(":")
    return ValueError(f"{_FLAGS[head]}:{rest}") if sep and head in _FLAGS else e


def cmd_prove(args) -> int:
    if args.list_blocks:
        print(list_blocks(args.list_blocks))
        return 0
    names = [_check_name(n) for n in args.theorems]
    if args.all:
        names = names or list(NAMES) + _variant_names()[0]
    elif args.variants:
        names = names + _variant_names()[0]
    if not names:
        raise ValueError("THEOREM: name at least one theorem or use --all")
    names = list(dict.fromkeys(names))
    zero = scale = None
    variants = [n for n in names if n not in NAMES]
    if args.zero is not None or args.scale is not None:
        if len(names) != 1 or names[0] == "compose" or variants:
            raise ValueError("--zero/--scale: give exactly one theorem (not compose, not a real-architecture claim)")
        from .theorems import parse_constraints

        try:
            zero, scale = parse_constraints(names[0], args.zero, args.scale)
        except ValueError as e:
            raise _flagged(e) from None
    sizes = _parse_sizes(args.size) if args.size else None
    if sizes:
        from .theorems import THEOREMS, check_sizes

        if "compose" in names:
            raise ValueError("--size: the composition runs at its own fixed sizes; leave compose out")
        if variants:
            raise ValueError(f"--size: the real-architecture claims run at their own sizes; leave {variants[0]} out")
        grown = {THEOREMS[n].grows + "_new" for n in names}
        foreign = sorted(k for k in sizes if k.endswith("_new") and k not in grown)
        if foreign:
            raise ValueError(f"--size: {', '.join(foreign)} is not grown by {', '.join(names)}")
        try:
            for n in names:
                check_sizes(n, sizes)
        except ValueError as e:
            raise _flagged(e) from None
    from fpt_ref.files import check_output_file, write_text

    for path, flag in ((args.latex, "--latex"), (args.markdown, "--markdown")):
        if path:
            check_output_file(path, flag)  # before any work
    from .report import json_report, latex_document, markdown_report, run, text_report

    r = run(names, zero, scale, minimal=args.all or args.minimal, sizes=sizes)
    print(json_report(r) if args.json else text_report(r, show_chains=args.chains))
    if args.latex:
        write_text(args.latex, latex_document(r), "--latex")
        if not args.json:
            print(f"wrote {args.latex}")
    if args.markdown:
        write_text(args.markdown, markdown_report(r), "--markdown")
        if not args.json:
            print(f"wrote {args.markdown}")
    return 0 if r.ok else 1

"""``fpt-ref prove``: machine-checked proofs of the six theorems, epsilon and composition.

``register`` is cheap: SymPy is imported only when the command runs.
"""

from __future__ import annotations

NAMES = ["mlp", "add_heads", "heads", "attention", "hidden", "add_layer", "eps", "compose"]


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "prove",
        help="prove the expansions preserve the function (SymPy): both levels, minimality, composition",
        description="Prove Theorems 3.1-3.6 (mlp, add_heads, heads, attention, hidden, add_layer), the epsilon "
        "rescaling (eps) and the composition of all six (compose). Exit 0 when every claim is proved, "
        "1 when one is refuted or not proved, 2 on bad usage.",
    )
    s.add_argument("theorems", nargs="*", metavar="THEOREM", help=f"any of: {', '.join(NAMES)}")
    s.add_argument(
        "--all", action="store_true", help="every theorem, with minimality (dropped constraints, minimal sets)"
    )
    s.add_argument("--minimal", action="store_true", help="also drop each constraint and search all minimal sets")
    s.add_argument("--zero", metavar="BLOCK[,BLOCK...]|none", help="your own set of zero blocks (one theorem)")
    s.add_argument("--scale", metavar="W_K|W_Q|g|eps|none", help="your own scalings (one theorem)")
    s.add_argument("--list-blocks", metavar="THEOREM", help="list a theorem's new blocks and scalings, then exit")
    s.add_argument("--chains", action="store_true", help="print the proof chains as plain text")
    s.add_argument("--latex", metavar="FILE", help="write the proof chains as a LaTeX document")
    s.add_argument("--markdown", metavar="FILE", help="write the results, chains and counterexamples as Markdown")
    s.set_defaults(func=cmd_prove)


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"THEOREM: unknown theorem {name!r}; choose from {', '.join(NAMES)}")
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


def cmd_prove(args) -> int:
    if args.list_blocks:
        print(list_blocks(args.list_blocks))
        return 0
    names = [_check_name(n) for n in args.theorems]
    if args.all:
        names = names or list(NAMES)
    if not names:
        raise ValueError("THEOREM: name at least one theorem or use --all")
    names = list(dict.fromkeys(names))
    zero = scale = None
    if args.zero is not None or args.scale is not None:
        if len(names) != 1 or names[0] == "compose":
            raise ValueError("--zero/--scale: give exactly one theorem (not compose)")
        from .theorems import parse_constraints

        zero, scale = parse_constraints(names[0], args.zero, args.scale)
    from .report import latex_document, markdown_report, run, text_report

    r = run(names, zero, scale, minimal=args.all or args.minimal)
    print(text_report(r, show_chains=args.chains))
    if args.latex:
        with open(args.latex, "w") as f:
            f.write(latex_document(r))
        print(f"wrote {args.latex}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_report(r))
        print(f"wrote {args.markdown}")
    return 0 if r.ok else 1

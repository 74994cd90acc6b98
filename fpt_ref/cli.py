"""The ``fpt-ref`` command line.

Core commands live here; other packages add theirs through a ``register(subparsers)``
function (see ``EXTENSIONS``), which must stay cheap: heavy imports happen only when the
command runs. User errors print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

DEMO_PLAN = (
    "mlp p=48 layers=0,1; add_heads count=2; heads v=12 layers=1 heads=0; attention k=12; hidden h=24; add_layer at=1"
)
DEMO_MODEL = dict(
    h=16,
    p=32,
    heads=2,
    k=8,
    v=8,
    layers=2,
    out_dim=10,
    max_seq=12,
    vocab=50,
    eps=1e-6,
    causal=True,
    dtype="float64",
    seed=0,
)

# modules that add sub-commands: "module:function"
EXTENSIONS = ["proofs.cli:register", "fpt_ref.vectors:register", "fpt_ref.draw:register", "benchmarks.cli:register"]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse would print the usage too)
        raise UsageError(f"{self.prog}: {message}")


def int_arg(name, minimum=None):
    """An argparse ``type`` for integer options, with a one-line message naming the option."""

    def conv(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {value}")
        return value

    return conv


def cmd_init(args) -> int:
    from .init import init_model
    from .io import save
    from .model import param_count

    model = init_model(
        h=args.h,
        p=args.p,
        heads=args.heads,
        k=args.k,
        v=args.v,
        layers=args.layers,
        out_dim=args.out_dim,
        max_seq=args.max_seq,
        vocab=args.vocab,
        eps=args.eps,
        causal=args.causal,
        dtype=args.dtype,
        seed=args.seed,
    )
    save(model, args.out)
    print(f"wrote {args.out}: {param_count(model)} parameters")
    return 0


def format_table(rows: list) -> str:
    """One row per step: step, dims, parameter count, max abs error, max ulp error, tolerance."""
    w_step = max(len("step"), *(len(r["step"]) for r in rows))
    w_dims = max(len("dims"), *(len(r["dims"]) for r in rows))

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    head = f"{'step':<{w_step}}  {'dims':<{w_dims}}  {'params':>8}  {'max abs':>9}  {'max ulp':>7}  {'tol ulp':>7}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(
            f"{r['step']:<{w_step}}  {r['dims']:<{w_dims}}  {r['params']:>8}  {num(r['max_abs'], '.2e'):>9}  "
            f"{num(r['max_ulp'], '.1f'):>7}  {num(r['tol_ulp'], '.0f'):>7}  {ok}"
        )
    return "\n".join(lines)


def _run_and_print(model, plan, init, seed, manifest, batch=4, seq=None):
    from .model import dims_summary, param_count
    from .plan import run_plan

    results = run_plan(model, plan, init=init, seed=seed, check=True, batch=batch, seq=seq)
    rows = [
        {
            "step": "(base)",
            "dims": dims_summary(model),
            "params": param_count(model),
            "max_abs": None,
            "max_ulp": None,
            "tol_ulp": None,
            "ok": None,
        }
    ]
    rows += [r.row() for r in results]
    print(format_table(rows))
    _float32_note(model)
    if manifest:
        for r in results:
            print(f"\nmanifest of step: {r.step}")
            for block in r.manifest:
                print(f"  {block}")
    return results


def cmd_expand(args) -> int:
    from .io import load, save

    model = load(args.model)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"-o: folder {out_dir} does not exist")
    results = _run_and_print(model, args.plan, args.init, args.seed, args.manifest)
    save(results[-1].model, args.out)
    print(f"wrote {args.out}")
    return 0 if all(r.error["ok"] for r in results) else 1


def cmd_verify(args) -> int:
    from .io import load
    from .verify import verify

    a, b = load(args.a), load(args.b)
    st = verify(a, b, batch=args.batch, seq=args.seq, seed=args.seed)
    print(
        f"max abs {st['max_abs']:.3e}  max rel {st['max_rel']:.3e}  max ulp {st['max_ulp']:.2f}  "
        f"(tolerance {st['tol_ulp']:.0f} ulp): {'preserved' if st['ok'] else 'NOT preserved'}"
    )
    _float32_note(a)
    return 0 if st["ok"] else 1


def _float32_note(model) -> None:
    if str(model.dtype) == "float32":
        print(
            "note: float32 model: the sound tolerance is about 1e-3 relative and misses small violations; "
            "expand and verify in float64 (fpt_ref.convert(model, dtype='float64') widens exactly), then convert down"
        )


def cmd_info(args) -> int:
    from .io import load
    from .model import param_count

    m = load(args.model)
    print(
        f"{args.model}: h={m.h} o={m.o} N={m.N} s_max={m.s_max} vocab={m.vocab} dtype={m.dtype} "
        f"norm_eps={m.norm_eps!r} causal={str(m.causal).lower()} params={param_count(m)}"
    )
    for n, layer in enumerate(m.layers):
        heads = ", ".join(f"{e}:k={hd.k},v={hd.v}" for e, hd in enumerate(layer.heads))
        print(f"  layer {n}: p={layer.p} E={layer.E} heads [{heads}]")
    return 0


def cmd_demo(args) -> int:
    from .init import init_model

    model = init_model(**DEMO_MODEL)
    print(f"demo model: {DEMO_MODEL}")
    print(f"plan: {DEMO_PLAN}\n")
    results = _run_and_print(model, DEMO_PLAN, "normal", args.seed, args.manifest)
    ok = all(r.error["ok"] for r in results)
    print(f"\nall {len(results)} steps preserved the function: {'yes' if ok else 'NO'}")
    summary = _proof_summary()
    if summary:
        print(summary)
    return 0 if ok else 1


def _proof_summary():
    try:
        mod = importlib.import_module("proofs")
    except ImportError:
        return None
    fn = getattr(mod, "summary_line", None)
    return fn() if fn else None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fpt-ref", description="Composable function-preserving transformer expansions (reference).")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    s = sub.add_parser("init", help="write a random model")
    for name, default in (("h", 16), ("p", 32), ("heads", 2), ("k", 8), ("v", 8), ("layers", 2)):
        s.add_argument(f"--{name}", type=int_arg(f"--{name}"), default=default)
    s.add_argument("--out-dim", type=int_arg("--out-dim"), default=10)
    s.add_argument("--max-seq", type=int_arg("--max-seq"), default=12)
    s.add_argument("--vocab", type=int_arg("--vocab"), default=None)
    s.add_argument("--eps", type=float, default=0.0)
    s.add_argument("--causal", action="store_true")
    s.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    s.add_argument("--seed", type=int_arg("--seed", 0), default=0)
    s.add_argument("-o", "--out", required=True)
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("expand", help="apply a plan of expansions, checking each step")
    s.add_argument("model")
    s.add_argument("--plan", required=True, help="';'-separated steps or a JSON file")
    s.add_argument("--init", choices=["normal", "zeros"], default="normal")
    s.add_argument("--seed", type=int_arg("--seed", 0), default=0)
    s.add_argument("--manifest", action="store_true", help="print every new or changed block and its role")
    s.add_argument("-o", "--out", required=True)
    s.set_defaults(func=cmd_expand)

    s = sub.add_parser("verify", help="compare two models on the same random inputs")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--batch", type=int_arg("--batch"), default=4)
    s.add_argument("--seq", type=int_arg("--seq"), default=None)
    s.add_argument("--seed", type=int_arg("--seed", 0), default=0)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("info", help="dimensions and parameter count of a model file")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("demo", help="all six expansions composed on a built-in model")
    s.add_argument("--seed", type=int_arg("--seed", 0), default=0)
    s.add_argument("--manifest", action="store_true")
    s.set_defaults(func=cmd_demo)

    for ext in EXTENSIONS:
        mod_name, fn_name = ext.split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
                continue  # that part of the project is not present
            raise
        getattr(mod, fn_name)(sub)
    return p


def main(argv=None) -> int:
    from .io import FormatError
    from .plan import PlanError

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (PlanError, FormatError, OSError, ValueError) as exc:  # OSError: unreadable/unwritable user paths
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"fpt-ref: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

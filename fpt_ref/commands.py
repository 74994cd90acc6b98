"""The core ``fpt-ref`` sub-commands: ``init``, ``expand``, ``verify``, ``info`` and ``demo``.

:mod:`fpt_ref.cli` registers them first, with the same ``register(subparsers)`` interface as
the plug-ins; ``register`` is cheap, the work is imported when a command runs.
``demo`` also prints one line from each entry of the ``fpt_ref.demo_summaries`` group
(a function of no arguments returning a line, or ``None``).
"""

from __future__ import annotations

import argparse

from .cli_args import flag_error, int_arg

DEMO_SUMMARIES = "fpt_ref.demo_summaries"

#: ``init``'s dimension flags: Python parameter of :func:`fpt_ref.init_model` -> flag
INIT_FLAGS = {
    "h": "--h",
    "p": "--p",
    "n_heads": "--heads",
    "k": "--k",
    "v": "--v",
    "n_layers": "--layers",
    "out_dim": "--out-dim",
    "max_seq": "--max-seq",
    "vocab": "--vocab",
    "eps": "--eps",
    "norm_eps": "--eps",
    "dtype": "--dtype",
    "seed": "--seed",
    "arch": "--arch",
    "kv_heads": "--kv-heads",
}


def arch_flags() -> dict:
    """One ``init`` flag per field of :class:`fpt_ref.blocks.Arch`: field -> flag (``rope_theta`` ->
    ``--rope-theta``); each overrides the preset's value."""
    from dataclasses import fields

    from .blocks import Arch

    return {f.name: "--" + f.name.replace("_", "-") for f in fields(Arch)}


def _arch_choices() -> dict:
    from .blocks import ACTIVATIONS, MLPS, NORMS, POSITIONS, ROPE_LAYOUTS

    return {"norm": NORMS, "mlp": MLPS, "act": ACTIVATIONS, "positions": POSITIONS, "rope_layout": ROPE_LAYOUTS}


def init_arch(args):
    """The :class:`fpt_ref.blocks.Arch` of ``init``'s arguments: the ``--arch`` preset with every
    field flag given overriding its value. Raises ``ValueError`` naming the flag at fault."""
    from .blocks import PRESETS

    flags = arch_flags()
    changes = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    try:
        arch = PRESETS[args.arch].replace(**changes)
    except (TypeError, ValueError) as exc:
        raise flag_error(exc, flags) from None
    for name in ("rope_theta", "rope_layout"):
        if name in changes and arch.positions != "rope":
            raise ValueError(
                f"{flags[name]}: used only with --positions rope (this architecture's positions are {arch.positions})"
            )
    return arch


def arch_label(arch) -> str:
    """The name of the preset ``arch`` is (:data:`fpt_ref.blocks.PRESETS`), else ``custom``.

    ``rope_theta`` is not compared: RoPE key growth changes it (docs/spec.md section 4.2), and
    the grown model is still of its preset's kind.
    """
    from .blocks import PRESETS

    theta = arch.rope_theta
    return next((name for name, preset in PRESETS.items() if preset.replace(rope_theta=theta) == arch), "custom")


def cmd_init(args) -> int:
    from .files import check_output_file
    from .init import init_model
    from .io import save
    from .model import param_count

    check_output_file(args.out, "-o")
    arch = init_arch(args)
    out_dim = 10 if args.out_dim is None else args.out_dim
    if arch.tied and args.out_dim is not None and args.out_dim != args.vocab:
        raise ValueError(f"--out-dim: a tied output has one output per token id (--vocab {args.vocab}); leave it out")
    try:
        model = init_model(
            h=args.h,
            p=args.p,
            n_heads=args.heads,
            k=args.k,
            v=args.v,
            n_layers=args.layers,
            out_dim=out_dim,
            max_seq=args.max_seq,
            vocab=args.vocab,
            eps=args.eps,
            causal=args.causal,
            dtype=args.dtype,
            seed=args.seed,
            arch=arch,
            kv_heads=args.kv_heads,
        )
    except (TypeError, ValueError) as exc:
        raise flag_error(exc, INIT_FLAGS) from None
    save(model, args.out)
    what = "" if arch.is_paper else f" ({_arch_summary(model)})"
    print(f"wrote {args.out}: {param_count(model)} parameters{what}")
    return 0


def _arch_summary(model) -> str:
    """``llama: glu, silu, rope, no_mlp_bias, final_norm, gqa``: the preset and the block names."""
    names = list(model.arch.names()) + ["gqa"] * any(layer.grouped for layer in model.layers)
    return f"{arch_label(model.arch)}: {', '.join(names) or 'the paper blocks'}"


def format_table(rows: list) -> str:
    """One row per step: step, dims, parameter count, max abs error, max ulp error, tolerance,
    the block audit and the verdict."""
    w_step = max(len("step"), *(len(r["step"]) for r in rows))
    w_dims = max(len("dims"), *(len(r["dims"]) for r in rows))

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    head = (
        f"{'step':<{w_step}}  {'dims':<{w_dims}}  {'params':>8}  {'max abs':>9}  {'max ulp':>7}  {'tol ulp':>7}  "
        f"blocks  ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(
            f"{r['step']:<{w_step}}  {r['dims']:<{w_dims}}  {r['params']:>8}  {num(r['max_abs'], '.2e'):>9}  "
            f"{num(r['max_ulp'], '.1f'):>7}  {num(r['tol_ulp'], '.0f'):>7}  {r.get('blocks') or '-':<6}  {ok}"
        )
    return "\n".join(lines)


def _run_and_print(model, plan, init, seed, manifest, batch=4, seq=None, scale=1.0):
    from .model import dims_summary, param_count
    from .plan import run_plan

    results = run_plan(model, plan, init=init, seed=seed, check=True, batch=batch, seq=seq, scale=scale)
    rows = [
        {
            "step": "(base)",
            "dims": dims_summary(model),
            "params": param_count(model),
            "max_abs": None,
            "max_ulp": None,
            "tol_ulp": None,
            "blocks": None,
            "ok": None,
        }
    ]
    rows += [r.row() for r in results]
    print(format_table(rows))
    for i, r in enumerate(results, start=1):
        if not r.error["audit"].ok:
            print(f"step {i} blocks: {r.error['audit'].first}")
    _float32_note(model)
    if manifest:
        for r in results:
            print(f"\nmanifest of step: {r.step}")
            for block in r.manifest:
                print(f"  {block}")
    return results


def load_model(path, allow_nonfinite: bool = False):
    """:func:`fpt_ref.load` for a command: with ``allow_nonfinite``, one warning line on
    stderr per tensor holding NaN or infinity (name and count)."""
    import sys

    from .io import load, nonfinite_counts
    from .model import named_tensors

    model = load(path, allow_nonfinite=allow_nonfinite)
    if allow_nonfinite:
        for name, count in nonfinite_counts(named_tensors(model)).items():
            print(f"fpt-ref: warning: {path}: tensor {name!r} holds {count} non-finite values", file=sys.stderr)
    return model


def _require_plan_and_write(model, plan) -> None:
    """Refuse, before the first step, a plan whose steps, check or written result would not fit.

    The steps and the check as :func:`fpt_ref.plan.run_plan` sizes them; writing holds every
    model of the plan plus, at most, one contiguous copy of the result's tensors (the file
    itself is streamed, :func:`fpt_ref.files.write_safetensors`).
    """
    from .memory import available_bytes, fmt_bytes, model_bytes, require
    from .model import dims
    from .plan import parse_plan, plan_bytes, plan_dims

    avail = available_bytes()
    steps = parse_plan(plan)
    per_step, checking = plan_bytes(model, steps, True, 4, None, avail)
    for i, (step, need) in enumerate(zip(steps, per_step), start=1):
        require(need, f"plan: step {i} ({step})", avail)
    require(checking, f"plan: checking the {len(steps)} steps on batch=4 sequences", avail)
    itemsize = int(model.dtype.itemsize)
    chain = [dims(model)] + plan_dims(model, steps, avail)
    final = model_bytes(chain[-1], itemsize)
    need = sum(model_bytes(d, itemsize) for d in chain) + final
    require(need, f"writing the result ({fmt_bytes(final)})", avail)


def _expand_checkpoint(args) -> int:
    """``expand`` on a Hugging Face checkpoint folder: the plan's end state is checked against
    the family's config, and the output folder, before any step runs (docs/hf.md)."""
    from . import hf

    for flag, given in (("--manifest-out", args.manifest_out), ("--force", args.force)):
        if given:
            raise ValueError(f"{flag}: not available for a checkpoint folder (the output is a folder)")
    if getattr(args, "stream", False):
        return _expand_checkpoint_streamed(args)
    try:
        ck, steps = hf.plan_checkpoint(args.model, args.plan, args.out, dtype=args.dtype)
    except ValueError as exc:
        msg = str(exc)
        for name, flag in (("out_dir:", "-o:"), ("dtype:", "--dtype:")):
            if msg.startswith(name):
                raise ValueError(flag + msg[len(name) :]) from None
        raise ValueError(f"{args.model}: {msg}" if msg.startswith(("config:", "model:", "path:")) else msg) from None
    _require_plan_and_write(ck.model, steps)
    results = _run_and_print(ck.model, steps, args.init, args.seed, args.manifest, scale=args.scale)
    if not all(r.error["ok"] for r in results):
        bad = [str(i) for i, r in enumerate(results, start=1) if not r.error["ok"]]
        print(f"NOT preserved (step {', '.join(bad)}): nothing written")
        return 1
    try:
        hf.save(results[-1].model, args.out, like=ck, dtype=args.dtype)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg.replace("out_dir:", "-o:", 1) if msg.startswith("out_dir:") else msg) from None
    stored = args.dtype or ck.stored_dtype
    print(f"wrote {args.out}: a {ck.family} checkpoint folder ({stored})")
    factors = sorted(
        {b.factor for r in results for b in r.manifest if b.role == "scaled" and not _power_of_two(b.factor)}
    )
    if factors and stored != "float64":
        print(
            f"note: stored as {stored}, the scaled blocks (factors {', '.join(f'{f:.6g}' for f in factors)}, not powers "
            f"of two) are rounded once more: the folder computes the base's function to {stored} precision only "
            "(grow by ratios of 4 for factors of 2, or write --dtype float64; docs/hf.md)"
        )
    return 0


def _expand_checkpoint_streamed(args) -> int:
    """``expand --stream`` on a checkpoint folder: grown a layer at a time and certified block by
    block against the input before it is put in place (:func:`fpt_ref.hf.stream_expand.expand_stream`)."""
    from .hf.stream_expand import expand_stream

    if args.manifest:
        raise ValueError("--manifest: not available with --stream (the blocks are certified instead)")
    try:
        cert = expand_stream(args.model, args.plan, args.out, dtype=args.dtype, init=args.init, seed=args.seed)
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("plan: the grown folder is not certified"):
            print(f"NOT preserved: {msg[len('plan: the grown folder is not certified, nothing written: ') :]}")
            print("nothing written")
            return 1
        if msg.startswith("out_dir:"):
            raise ValueError(msg.replace("out_dir:", "-o:", 1)) from None
        if msg.startswith("dtype:"):
            raise ValueError(msg.replace("dtype:", "--dtype:", 1)) from None
        raise ValueError(f"{args.model}: {msg}" if msg.startswith(("config:", "model:", "path:")) else msg) from None
    layers = " ".join(
        f"{L['grown']}<-{L['base']}" if L["base"] is not None else f"{L['grown']}=identity" for L in cert.layers
    )
    print(f"wrote {args.out}: grown a layer at a time; layers (grown<-base): {layers}")
    print(f"blocks certified, forward not run: {cert.blocks} blocks of {args.out} hold {args.model} under the rules")
    for note in cert.notes:
        print(f"note: {note}")
    return 0


def _power_of_two(x) -> bool:
    import math

    m, _ = math.frexp(float(x))
    return m == 0.5


def cmd_expand(args) -> int:
    import os

    from .files import check_output_file
    from .io import save

    if os.path.isdir(args.model):
        from .hf import is_checkpoint

        if is_checkpoint(args.model):
            return _expand_checkpoint(args)
    if args.dtype is not None:
        raise ValueError("--dtype: only for a checkpoint folder (convert a model file with fpt_ref.convert)")
    if getattr(args, "stream", False):
        raise ValueError("--stream: only for a checkpoint folder (a model file is grown in memory)")
    out = check_output_file(args.out, "-o")  # before any work: a device, FIFO or folder is refused
    record_out = None if args.manifest_out is None else check_output_file(args.manifest_out, "--manifest-out")
    if record_out is not None and record_out == out:
        raise ValueError("--manifest-out: the same file as -o")
    model = load_model(args.model, args.allow_nonfinite)
    _require_plan_and_write(model, args.plan)
    results = _run_and_print(model, args.plan, args.init, args.seed, args.manifest, scale=args.scale)
    ok = all(r.error["ok"] for r in results)
    if not ok and not args.force:
        bad = [str(i) for i, r in enumerate(results, start=1) if not r.error["ok"]]
        print(f"NOT preserved (step {', '.join(bad)}): nothing written (--force writes the result anyway)")
        return 1
    save(results[-1].model, out)  # atomic: an input given as -o is replaced only now
    if record_out is not None:
        import json

        from .audit import plan_record
        from .files import write_text

        record = plan_record(model, results, args.init, args.seed)
        write_text(record_out, json.dumps(record, indent=1, sort_keys=True) + "\n", "--manifest-out")
        print(f"wrote {args.manifest_out}: the plan record (fpt-ref verify BASE OUT --manifest {args.manifest_out})")
    if ok:
        print(f"wrote {args.out}")
        return 0
    print(f"wrote {args.out}: NOT preserved, written because of --force")
    return 1


def cmd_verify(args) -> int:
    import json

    from .audit import audit_record, parse_record
    from .io import load
    from .verify import verify

    record = None
    if args.manifest is not None:  # read and checked before any work
        try:
            with open(args.manifest, encoding="utf-8") as f:
                record = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{args.manifest}: not a JSON manifest ({exc})") from None
        try:
            parse_record(record)
        except ValueError as exc:
            raise ValueError(f"{args.manifest}: {exc}") from None
    a, b = load(args.a), load(args.b)
    st = verify(a, b, batch=args.batch, seq=args.seq, seed=args.seed, scale=args.scale)
    inputs = st["inputs"]
    covered = f"all {inputs['tokens_covered']} token ids, " if inputs["tokens_covered"] else ""
    print(
        f"inputs: {covered}{inputs['sequences']} sequences ({', '.join(f'{k} {v}' for k, v in inputs['sets'].items())})"
    )
    print(
        f"max abs {st['max_abs']:.3e}  max rel {st['max_rel']:.3e}  max ulp {st['max_ulp']:.2f}  "
        f"(tolerance {st['tol_ulp']:.0f} ulp): {'preserved' if st['ok'] else 'NOT preserved'}"
    )
    if st["reason"]:
        print(f"not preserved: {st['reason']}")
    ok = st["ok"]
    if record is not None:
        rep = audit_record(a, b, record)
        for note in rep.notes:
            print(f"note: {note}")
        if rep.ok:
            print(f"blocks: {rep.blocks} blocks of {len(record['steps'])} steps audited bit for bit: all as recorded")
        else:
            print(f"blocks: NOT as recorded: {rep.first}")
        ok = ok and rep.ok
    _float32_note(a)
    return 0 if ok else 1


def _float32_note(model) -> None:
    if str(model.dtype) == "float32":
        print(
            "note: float32 model: the sound tolerance is about 1e-3 relative and misses small violations; "
            "expand and verify in float64 (fpt_ref.convert(model, dtype='float64') widens exactly), then convert down"
        )


def cmd_info(args) -> int:
    import os

    from .io import load, load_header
    from .model import param_count

    stored = ""
    if os.path.isdir(args.model):  # a checkpoint folder: read (float64) through fpt_ref.hf
        from . import hf

        if hf.is_checkpoint(args.model):
            try:
                ck = hf.read(args.model)
            except ValueError as exc:
                raise ValueError(f"{args.model}: {exc}") from None
            m, stored = ck.model, f" ({ck.family} checkpoint, stored {ck.stored_dtype})"
        else:
            m = load(args.model)  # the one-line error of fpt_ref.load for a folder
    else:
        m = load_header(args.model)  # the header only: no tensor data is read
    print(
        f"{args.model}: h={m.h} o={m.o} N={m.N} s_max={m.s_max} vocab={m.vocab} dtype={m.dtype}{stored} "
        f"norm_eps={m.norm_eps!r} causal={str(m.causal).lower()} params={param_count(m)}"
    )
    fields = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in m.arch.to_dict().items())
    print(f"  arch {_arch_summary(m)}")
    print(f"    {fields}")
    for n, layer in enumerate(m.layers):
        heads = ", ".join(f"{e}:k={hd.k},v={hd.v}" for e, hd in enumerate(layer.heads))
        print(f"  layer {n}: p={layer.p} E={layer.E} kv_heads={layer.G} heads [{heads}]")
    if args.nonfinite:
        from .io import load, nonfinite_counts
        from .model import named_tensors

        counts = nonfinite_counts(named_tensors(load(args.model, allow_nonfinite=True)))
        print(f"non-finite values: {sum(counts.values())}")
        for name, count in counts.items():
            print(f"  {name}: {count}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DEMO_MODEL, DEMO_PLAN, demo_model

    model = demo_model(args.arch)
    arch = "" if model.arch.is_paper else f", arch {_arch_summary(model)}"
    print(f"demo model: {dict(DEMO_MODEL)}{arch}")
    print(f"plan: {DEMO_PLAN}\n")
    results = _run_and_print(model, DEMO_PLAN, "normal", args.seed, args.manifest)
    ok = all(r.error["ok"] for r in results)
    print(f"\nall {len(results)} steps preserved the function: {'yes' if ok else 'NO'}")
    for line in _demo_summaries():
        print(line)
    return 0 if ok else 1


def _demo_summaries() -> list:
    """The lines of the ``fpt_ref.demo_summaries`` plug-ins present, in the order of their names."""
    from .plugins import entry_points, load

    lines = []
    for _, value in entry_points(DEMO_SUMMARIES):
        fn = load(value)
        line = None if fn is None else fn()
        if line:
            lines.append(line)
    return lines


#: help of each block flag (docs/spec.md section 4.1)
_ARCH_HELP = {
    "norm": "RMSNorm or LayerNorm (with a bias)",
    "mlp": "plain or gated (SwiGLU, GeGLU) MLP",
    "act": "the MLP's activation (gelu_tanh: the tanh approximation)",
    "mlp_bias": "MLP biases",
    "positions": "learned position rows, rotary (RoPE) or none",
    "rope_theta": "RoPE base theta (> 1; with --positions rope)",
    "rope_layout": "RoPE pairs: i with i+k/2 (half) or 2i with 2i+1 (interleaved)",
    "qkv_bias": "query, key and value biases",
    "o_bias": "attention output bias",
    "final_norm": "a norm before the output",
    "tied": "output tied to the embedding (W_out = embed^T; needs --vocab)",
}


def _add_arch_arguments(s) -> None:
    """``--arch``, ``--kv-heads`` and one flag per :class:`fpt_ref.blocks.Arch` field (docs/spec.md section 4)."""
    from .blocks import PRESETS

    g = s.add_argument_group("architecture (docs/spec.md section 4; each block flag overrides the preset)")
    g.add_argument("--arch", choices=list(PRESETS), default="paper", help="preset blocks (default: paper)")
    g.add_argument("--kv-heads", type=int_arg(1), default=None, help="key/value heads per layer (divides --heads)")
    choices = _arch_choices()
    for name, flag in arch_flags().items():
        what = _ARCH_HELP.get(name)
        if name in choices:
            g.add_argument(flag, dest=name, choices=choices[name], default=None, help=what)
        elif name == "rope_theta":
            g.add_argument(flag, dest=name, type=float, default=None, metavar="THETA", help=what)
        else:  # every other field is a bool
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=what)


def register(subparsers) -> None:
    """Add ``init``, ``expand``, ``verify``, ``info`` and ``demo`` to the ``fpt-ref`` command line."""
    from .blocks import PRESETS

    s = subparsers.add_parser("init", help="write a random model")
    for name, default in (("h", 16), ("p", 32), ("heads", 2), ("k", 8), ("v", 8), ("layers", 2)):
        s.add_argument(f"--{name}", type=int_arg(), default=default)
    s.add_argument("--out-dim", type=int_arg(), default=None, help="outputs (default 10; tied: --vocab)")
    s.add_argument("--max-seq", type=int_arg(), default=12)
    s.add_argument("--vocab", type=int_arg(), default=None)
    s.add_argument("--eps", type=float, default=0.0)
    s.add_argument("--causal", action="store_true")
    s.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    s.add_argument("--seed", type=int_arg(0), default=0)
    s.add_argument("-o", "--out", required=True, help="output file: a regular file or a new one")
    _add_arch_arguments(s)
    s.set_defaults(func=cmd_init)

    s = subparsers.add_parser("expand", help="apply a plan of expansions, checking each step")
    s.add_argument("model")
    s.add_argument("--plan", required=True, help="';'-separated steps or a JSON file")
    s.add_argument("--init", choices=["normal", "zeros"], default="normal")
    s.add_argument("--seed", type=int_arg(0), default=0)
    s.add_argument("--manifest", action="store_true", help="print every new or changed block and its role")
    s.add_argument("--scale", type=float, default=1.0, help="standard deviation of the check's real-valued inputs")
    s.add_argument(
        "--manifest-out",
        metavar="FILE",
        default=None,
        help="write the plan record (steps, seeds, every block) for `fpt-ref verify --manifest`",
    )
    s.add_argument(
        "--force", action="store_true", help="write the result even when a step is not preserved (exit status 1)"
    )
    s.add_argument(
        "--allow-nonfinite", action="store_true", help="load a model holding NaN or inf (a warning names each tensor)"
    )
    s.add_argument(
        "--dtype",
        default=None,
        help="checkpoint folders: the stored dtype of the output (float32, bfloat16, float16, float64; default the input's)",
    )
    s.add_argument(
        "-o",
        "--out",
        required=True,
        help="output file: a regular file or a new one (may be the input; see README); for a checkpoint folder, a new "
        "or empty folder",
    )
    s.add_argument(
        "--stream",
        action="store_true",
        help="checkpoint folders: grow a layer at a time (one layer held, one shard per layer) and certify the "
        "blocks of the result against the input (no forward check)",
    )
    s.set_defaults(func=cmd_expand)

    s = subparsers.add_parser("verify", help="compare two models on every token id and position and random inputs")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--batch", type=int_arg(), default=4)
    s.add_argument("--seq", type=int_arg(), default=None)
    s.add_argument("--seed", type=int_arg(0), default=0)
    s.add_argument("--scale", type=float, default=1.0, help="standard deviation of real-valued inputs (default 1)")
    s.add_argument(
        "--manifest", metavar="FILE", default=None, help="a plan record from `expand --manifest-out`: audit every block"
    )
    s.set_defaults(func=cmd_verify)

    s = subparsers.add_parser("info", help="dimensions and parameter count of a model file")
    s.add_argument("model")
    s.add_argument("--nonfinite", action="store_true", help="also read the data and count NaN and inf per tensor")
    s.set_defaults(func=cmd_info)

    s = subparsers.add_parser("demo", help="all six expansions composed on a built-in model")
    s.add_argument("--seed", type=int_arg(0), default=0)
    s.add_argument("--arch", choices=list(PRESETS), default="paper", help="the demo model's blocks (a preset)")
    s.add_argument("--manifest", action="store_true")
    s.set_defaults(func=cmd_demo)

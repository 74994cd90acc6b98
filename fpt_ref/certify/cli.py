"""``fpt-ref certify BASE GROWN [--json]``: the sub-command of :mod:`fpt_ref.certify`.

Exit 0: GROWN contains BASE and computes its function (with ``--no-forward``: every block holds,
the report says "blocks certified, forward not run"; with ``--stream`` the forward check runs a
layer at a time on a sample of random sequences); 1: it does not, or is inconsistent
(the first offending tensor, block, option or config key is named, with the reason); 2: a
user error (a missing or unreadable file, not a model), one line on stderr. ``register``
stays cheap: the work is imported only when the command runs.
"""

from __future__ import annotations

import os

from ..cli_args import int_arg


def _config_of(path: str) -> dict | None:
    """A Hugging Face directory's ``config.json`` (``None`` for a model file; :func:`fpt_ref.hf.files.read_config`)."""
    from ..hf.files import CONFIG, read_config

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, CONFIG)):
        return None
    try:
        return read_config(path)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("path: ")) from None


def cmd_certify(args) -> int:
    import json

    from .. import load
    from ..io import FormatError
    from .infer import certify
    from .report import format_certificate

    if args.stream:
        return _certify_streamed(args)
    base_cfg, grown_cfg = _config_of(args.base), _config_of(args.grown)
    base = load(args.base)
    try:
        grown = load(args.grown)
    except FormatError as exc:
        if grown_cfg is None or ": config: " not in str(exc):
            raise
        # a checkpoint folder whose config does not describe its tensors: inconsistent, not a user error
        reason = str(exc).split(": config: ", 1)[1]
        if args.json:
            print(json.dumps({"preserved": False, "inconsistent": reason, "grown": args.grown}, indent=1))
        else:
            print(f"{args.grown}: NOT certified: inconsistent config.json: {reason}")
        return 1
    cert = certify(
        base, grown, base_config=base_cfg, grown_config=grown_cfg, forward=not args.no_forward, steps=args.steps
    )
    if args.json:
        print(json.dumps(cert.to_dict(), indent=1, default=float))
    else:
        print(format_certificate(cert, args.base, args.grown))
    return 0 if cert.ok else 1


def _inconsistent(args, reason: str) -> int:
    import json

    if args.json:
        print(json.dumps({"preserved": False, "inconsistent": reason, "grown": args.grown}, indent=1))
    else:
        print(f"{args.grown}: NOT certified: inconsistent config.json: {reason}")
    return 1


def _certify_streamed(args) -> int:
    """``--stream``: the block audit of two checkpoint folders a layer at a time, then (unless
    ``--no-forward``) the forward check, streamed too, on a sample of random sequences."""
    import json

    from ..hf import is_checkpoint
    from ..hf.stream import Stream
    from .report import format_certificate
    from .stream import certify_folders

    for path in (args.base, args.grown):
        if not is_checkpoint(path):
            raise ValueError(f"--stream: {path} is not a checkpoint folder (config.json and model.safetensors)")
    try:
        Stream(args.base)
    except ValueError as exc:
        raise ValueError(f"{args.base}: {exc}") from None
    try:
        cert = certify_folders(args.base, args.grown, steps=args.steps, forward=not args.no_forward)
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("config: "):
            return _inconsistent(args, msg[len("config: ") :])
        raise ValueError(f"{args.grown}: {msg}") from None
    if args.json:
        print(json.dumps(cert.to_dict(), indent=1, default=float))
    else:
        print(format_certificate(cert, args.base, args.grown))
    return 0 if cert.ok else 1


def register(subparsers) -> None:
    """Add ``certify`` to the ``fpt-ref`` command line."""
    s = subparsers.add_parser(
        "certify",
        help="certify that GROWN contains BASE and computes its function (no manifest needed)",
        description="Infer how GROWN was grown from BASE (inserted layers, added heads and groups, widened "
        "tensors), audit every block under the proved constraint sets, then compare float64 forward passes "
        "under the derived tolerance. Exit 0 preserved, 1 not preserved or inconsistent (naming the first "
        "offending tensor, block or option), 2 on bad usage or an unreadable model.",
    )
    s.add_argument("base", metavar="BASE", help="the original model (.safetensors)")
    s.add_argument("grown", metavar="GROWN", help="the grown model (.safetensors)")
    s.add_argument("--json", action="store_true", help="print the full report as JSON")
    s.add_argument(
        "--steps",
        type=int_arg(1),
        default=1,
        metavar="N",
        help="the most growth steps any one size took (default 1); each rounds scaled blocks, eps and theta once more",
    )
    s.add_argument("--no-forward", action="store_true", help="audit the blocks only (skip the forward check)")
    s.add_argument(
        "--stream",
        action="store_true",
        help="checkpoint folders only: audit the blocks a layer at a time from the files (at most one layer "
        "of each model held), then run the float64 forward check a layer at a time on 2 random sequences of "
        "16 tokens (not every token id; --no-forward skips it)",
    )
    s.set_defaults(func=cmd_certify)

"""Argument helpers shared by every ``fpt-ref`` sub-command, the core's and the plug-ins'.

A user error is one line on stderr and exit status 2: argparse's own errors become a
:class:`UsageError`, and :func:`run_command` prints the first line of any user-facing
exception (a ``ValueError`` names the Python parameter at fault, see :mod:`fpt_ref.checks`).
"""

from __future__ import annotations

import argparse
import sys

from .checks import parse_int


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (argparse would print the usage too)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def int_arg(minimum: int | None = None, maximum: int | None = None):
    """An argparse ``type`` for integer options, built on :func:`fpt_ref.checks.parse_int`.

    argparse names the option in its message (``argument --seed: must be at least 0, got -1``).
    """

    def conv(text):
        try:
            return parse_int("value", text, minimum, maximum)
        except ValueError as exc:  # "value: <why>" -> "<why>"
            raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None

    return conv


def flag_error(exc: BaseException, flags: dict) -> BaseException:
    """``exc`` as a ``ValueError`` naming the flag that sets its parameter, for a message that
    starts ``NAME: ...`` with ``NAME`` a key of ``flags`` (``{"n_heads": "--heads"}``); else ``exc``.

    Library messages name Python parameters (:mod:`fpt_ref.checks`); a command names its flags.

    >>> str(flag_error(ValueError("n_heads: must be at least 1, got 0"), {"n_heads": "--heads"}))
    '--heads: must be at least 1, got 0'
    """
    name, sep, rest = str(exc).partition(": ")
    if sep and name in flags:
        return ValueError(f"{flags[name]}: {rest}")
    return exc


def error_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty)."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def run_command(parser: argparse.ArgumentParser, argv=None, prog: str = "fpt-ref") -> int:
    """Parse ``argv`` with ``parser`` and run the chosen ``func(args)``; the exit status.

    User errors (bad usage, a bad plan or file, an unreadable or unwritable path, a bad
    value, a size that needs more memory than is available, a ``MemoryError``) print one
    line on stderr and give 2; Ctrl-C gives 130. Warnings (a deprecated name, a model
    loaded with non-finite values) print as one line ``PROG: warning: ...`` each.
    """
    import warnings

    from .io import FormatError
    from .plan import PlanError

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {error_line(Warning(str(message)))}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", DeprecationWarning)
            warnings.showwarning = one_line
            args = parser.parse_args(argv)
            return int(args.func(args) or 0)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (PlanError, FormatError, OSError, ValueError) as exc:  # OSError: unreadable/unwritable user paths
        # ValueError includes fpt_ref.memory.ResourceError: a size refused before allocating
        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # an allocation the estimates did not foresee: still one line
        what = f" ({error_line(exc)})" if str(exc).strip() else ""
        print(f"{prog}: error: out of memory{what}; use smaller sizes (or a larger machine)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

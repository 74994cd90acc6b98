"""The ``fpt-ref`` command line: the parser and ``main``; every sub-command is a plug-in.

Sub-commands come from the entry-point group ``fpt_ref.commands`` (``setup.cfg``,
``[options.entry_points]``; found by :mod:`fpt_ref.plugins`): each entry is a
``register(subparsers)`` function that adds its sub-parsers and sets ``func`` on them. It
must stay cheap: heavy imports happen only when the command runs. The core commands
(:mod:`fpt_ref.commands`) are registered the same way. A plug-in whose package is not
installed is left out. User errors print one line on stderr and exit 2
(:mod:`fpt_ref.cli_args`).
"""

from __future__ import annotations

import argparse

from .cli_args import Parser, run_command
from .plugins import entry_points, load

COMMANDS = "fpt_ref.commands"


def build_parser() -> argparse.ArgumentParser:
    """The ``fpt-ref`` parser with the sub-commands of every plug-in present, in entry-point order."""
    p = Parser(prog="fpt-ref", description="Composable function-preserving transformer expansions (reference).")
    sub = p.add_subparsers(dest="command", parser_class=Parser, required=True)
    for _, value in entry_points(COMMANDS):
        register = load(value)
        if register is not None:
            register(sub)
    return p


def main(argv=None) -> int:
    """Run ``fpt-ref`` with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    return run_command(build_parser(), argv, prog="fpt-ref")

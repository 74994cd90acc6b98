"""The ``fpt-ref`` command line: the parser and ``main``.

The core commands (:mod:`fpt_ref.commands`) come first; every other sub-command is a
plug-in of the entry-point group ``fpt_ref.commands`` (``setup.cfg``,
``[options.entry_points]``; found by :mod:`fpt_ref.plugins`, in the order of their entry
names). Each entry is a ``register(subparsers)`` function, the same interface as the
core's, that adds its sub-parsers and sets ``func`` on them. It must stay cheap: heavy
imports happen only when the command runs. A plug-in whose package is not installed is
left out. User errors print one line on stderr and exit 2 (:mod:`fpt_ref.cli_args`).
"""

from __future__ import annotations

import argparse

from . import commands
from ._version import version
from .cli_args import Parser, run_command
from .plugins import entry_points, load

COMMANDS = "fpt_ref.commands"


def build_parser() -> argparse.ArgumentParser:
    """The ``fpt-ref`` parser: the core commands, then those of every plug-in present."""
    p = Parser(prog="fpt-ref", description="Composable function-preserving transformer expansions (reference).")
    p.add_argument("--version", action="version", version=f"fpt-ref {version()}")
    sub = p.add_subparsers(dest="command", parser_class=Parser, required=True)
    commands.register(sub)
    for _, value in entry_points(COMMANDS):
        register = load(value)
        if register is not None:
            register(sub)
    return p


def main(argv=None) -> int:
    """Run ``fpt-ref`` with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    return run_command(build_parser(), argv, prog="fpt-ref")

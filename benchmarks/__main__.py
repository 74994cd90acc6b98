"""``python -m fpt_ref.benchmarks [options]``: the same as ``fpt-ref bench [options]``."""

import sys

from fpt_ref.cli_args import Parser, run_command

from .cli import add_arguments, cmd_bench


def main(argv=None) -> int:
    """Run the benchmarks with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    parser = Parser(
        prog=f"python -m {__package__}", description="Benchmarks: NumPy vs CuPy vs PyTorch, with roofline ratios."
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_bench)
    return run_command(parser, argv, prog=f"python -m {__package__}")


if __name__ == "__main__":
    sys.exit(main())

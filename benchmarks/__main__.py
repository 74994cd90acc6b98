"""``python -m benchmarks [options]``: the same as ``fpt-ref bench [options]``."""

import sys

from fpt_ref.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))

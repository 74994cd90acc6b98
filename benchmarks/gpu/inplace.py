"""Import ``fpt_ref.benchmarks`` and ``fpt_ref.proofs`` from a source tree that is not installed.

The distribution installs ``benchmarks/`` and ``proofs/`` inside ``fpt_ref`` (setup.cfg
``package_dir``); a bare checkout on ``PYTHONPATH`` has them only as top-level folders.
:func:`install` puts a finder first on ``sys.meta_path`` that maps the two packages to
those folders, when ``fpt_ref`` itself comes from the same tree. Importing this module
installs it, so ``python -m pytest -p benchmarks.gpu.inplace ...`` runs the test suite from
the working tree (the GPU machine has no network to install the project).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = {"fpt_ref.benchmarks": "benchmarks", "fpt_ref.proofs": "proofs"}


class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds the packages of :data:`PACKAGES` in the folders of ``root``."""

    def __init__(self, root: str):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        folder = PACKAGES.get(fullname)
        if folder is None:
            return None
        init = os.path.join(self.root, folder, "__init__.py")
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[os.path.dirname(init)]
        )


def install(root: str = ROOT) -> bool:
    """Put a :class:`SourceTreeFinder` for ``root`` first on ``sys.meta_path``; ``False`` (and
    nothing done) when ``fpt_ref`` is not imported from ``root`` or the finder is already there."""
    spec = importlib.util.find_spec("fpt_ref")
    origin = spec.origin if spec is not None else None
    if origin is None or os.path.dirname(os.path.dirname(os.path.abspath(origin))) != os.path.abspath(root):
        return False
    if any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, SourceTreeFinder(root))
    return True


install()
